//! `payctl transfer initiate`: validate, store `transfer:{id}` (version 1,
//! status initiated), publish it to `money_transfers`, wait for the ack.
//!
//! Order of effects: Redis first, then Kafka. If the broker does not ack,
//! the record is removed again, so a failed initiate leaves nothing behind;
//! a late delivery of such a message finds no record and is dead-lettered by
//! `transfer process` rather than applied.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Instant;

use anyhow::{bail, Context as _};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accounts::{self, Account};
use crate::kafka::{produce_each, Outgoing};
use crate::money::{Currency, Decimal, Money};
use crate::output::{self, Output, Rendered, Report};
use crate::store::{keys, run_pipeline, Redis, Script};
use crate::transfer::{Transfer, TransferStatus};

/// Start a transfer between two accounts (or many, from a file).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transfer initiate --from alice --to bob --amount 12.50
  payctl transfer initiate --from alice --to bob --amount 12.50 --idempotency-key order-1842
  payctl transfer initiate --file batch.jsonl      # {\"from\":\"alice\",\"to\":\"bob\",\"amount\":\"12.50\"} per line
  payctl transfer initiate --file batch.csv        # header: from,to,amount[,currency][,idempotency_key]")]
pub struct Args {
    /// Paying account.
    #[arg(long, required_unless_present = "file")]
    pub from: Option<String>,
    /// Receiving account.
    #[arg(long, required_unless_present = "file")]
    pub to: Option<String>,
    /// Exact decimal amount, e.g. 12.50.
    #[arg(long, required_unless_present = "file", allow_hyphen_values = true)]
    pub amount: Option<String>,
    /// Currency; defaults to the sender's. Both accounts must hold it.
    #[arg(long)]
    pub currency: Option<String>,
    /// A repeated key returns the first transfer and creates nothing.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Initiate every row of a JSON-lines or CSV file. All rows are checked
    /// before any is written.
    #[arg(long, conflicts_with_all = ["from", "to", "amount", "currency", "idempotency_key"])]
    pub file: Option<PathBuf>,
}

/// One transfer to initiate, from flags or one row of a file.
#[derive(Debug, Clone, Deserialize)]
pub struct TransferRequest {
    #[serde(alias = "sender_id")]
    pub from: String,
    #[serde(alias = "receiver_id")]
    pub to: String,
    pub amount: Decimal,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A transfer after initiate: the record, and whether this call created it.
#[derive(Debug, Clone, Serialize)]
pub struct Initiated {
    #[serde(flatten)]
    pub transfer: Transfer,
    /// False when an idempotency key returned an earlier transfer.
    pub created: bool,
}

impl Report for Initiated {
    fn render(&self) -> Rendered {
        Rendered::Line(self.transfer.transfer_id.clone())
    }
}

/// Checks one request against the accounts it names and builds its record.
fn validate(
    request: &TransferRequest,
    accounts: &HashMap<String, Account>,
) -> Result<Transfer, String> {
    let account = |id: &str| {
        accounts::validate_id(id).map_err(|e| e.to_string())?;
        accounts
            .get(id)
            .ok_or_else(|| format!("unknown account {id:?}"))
    };
    if request.from == request.to {
        return Err(format!(
            "sender and receiver are the same account ({:?})",
            request.from
        ));
    }
    let sender = account(&request.from)?;
    let receiver = account(&request.to)?;
    let currency = match &request.currency {
        Some(code) => Currency::parse(code).map_err(|e| e.to_string())?,
        None => sender.currency,
    };
    for party in [sender, receiver] {
        if party.currency != currency {
            return Err(format!(
                "currency mismatch: account {:?} holds {}, the transfer is in {currency}",
                party.id, party.currency
            ));
        }
    }
    let amount =
        Money::amount(request.amount, currency).map_err(|e| format!("invalid amount: {e}"))?;
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > 200 {
            return Err("idempotency key must be 1 to 200 characters".into());
        }
    }
    let now = crate::clock::now_rfc3339();
    Ok(Transfer {
        transfer_id: Uuid::new_v4().to_string(),
        sender_id: request.from.clone(),
        receiver_id: request.to.clone(),
        amount: amount.to_decimal(),
        status: TransferStatus::Initiated,
        version: 1,
        currency: Some(currency.code().to_string()),
        created_at: Some(now.clone()),
        updated_at: Some(now),
        idempotency_key: request.idempotency_key.clone(),
        reason: None,
    })
}

/// Checks every request before anything is written. Returns the records, or
/// every problem found, each prefixed with `label(index)` (say, `row 3: `).
pub async fn prepare(
    redis: &mut Redis,
    requests: &[TransferRequest],
    label: impl Fn(usize) -> String,
) -> anyhow::Result<Result<Vec<Transfer>, Vec<String>>> {
    let ids: Vec<String> = requests
        .iter()
        .flat_map(|r| [r.from.clone(), r.to.clone()])
        .filter(|id| accounts::validate_id(id).is_ok())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut known = HashMap::new();
    for chunk in ids.chunks(1000) {
        for account in accounts::get_many(redis, chunk)
            .await?
            .into_iter()
            .flatten()
        {
            known.insert(account.id.clone(), account);
        }
    }
    let mut transfers = Vec::with_capacity(requests.len());
    let mut problems = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        match validate(request, &known) {
            Ok(transfer) => transfers.push(transfer),
            Err(problem) => problems.push(format!("{}{problem}", label(i))),
        }
    }
    Ok(if problems.is_empty() {
        Ok(transfers)
    } else {
        Err(problems)
    })
}

static INITIATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: transfer record, transfers index, unpublished set, [idempotency key]
-- ARGV: record JSON, id, score. Returns {1, id} when created, {0, earlier id}.
if #KEYS >= 4 then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[4], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return {1, ARGV[2]}
"#,
    )
});

static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- Undo an initiate whose message the broker did not acknowledge, unless it
-- was processed after all (then it stays: it was published, its money moved).
-- KEYS: transfer record, transfers index, unpublished set, [idempotency key]. ARGV: id
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, t = pcall(cjson.decode, stored)
  if ok and type(t) == 'table' and t.status ~= 'initiated' then
    redis.call('SREM', KEYS[3], ARGV[1])
    return 0
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if #KEYS >= 4 and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"#,
    )
});

fn record_keys(transfer: &Transfer) -> Vec<String> {
    let mut keys = vec![
        keys::transfer(&transfer.transfer_id),
        keys::TRANSFERS.to_string(),
        keys::UNPUBLISHED_TRANSFERS.to_string(),
    ];
    if let Some(key) = &transfer.idempotency_key {
        keys.push(keys::transfer_idempotency(key));
    }
    keys
}

fn script_call(script: &Script, transfer: &Transfer) -> redis::Cmd {
    let keys = record_keys(transfer);
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    script.call(&key_refs)
}

/// Where initiated transfers go.
pub struct Publisher<'a> {
    pub redis: &'a mut Redis,
    pub producer: &'a FutureProducer,
    pub topic: &'a str,
}

/// What one transfer of a chunk needs after its record is stored.
enum Step {
    /// Created now: publish; undo on failure.
    New(Transfer),
    /// An idempotency key's earlier transfer, already published.
    Earlier(Transfer),
    /// An earlier transfer whose publishing never finished: publish again
    /// (processing is idempotent by version, so a second copy is harmless).
    Republish(Transfer),
}

impl Publisher<'_> {
    /// Stores and publishes prepared transfers: one pipelined Redis round
    /// trip, all messages in flight at once, then every ack awaited. A
    /// transfer stays in `transfers:unpublished` until its ack; one whose
    /// message is not acknowledged is removed again and comes back as an error.
    pub async fn initiate(
        &mut self,
        transfers: Vec<Transfer>,
    ) -> anyhow::Result<Vec<anyhow::Result<Initiated>>> {
        if transfers.is_empty() {
            return Ok(Vec::new());
        }
        for script in [&*INITIATE, &*DISCARD] {
            script.load(self.redis).await?;
        }
        let score = crate::clock::now_millis();
        let mut pipe = redis::pipe();
        for transfer in &transfers {
            let mut call = script_call(&INITIATE, transfer);
            call.arg(serde_json::to_string(transfer)?)
                .arg(&transfer.transfer_id)
                .arg(score);
            pipe.add_command(call);
        }
        let stored: Vec<(i64, String)> = pipe
            .query_async(self.redis)
            .await
            .context("storing transfers in Redis")?;

        // What the idempotency keys returned, in one round trip: re-running a
        // whole batch file is mostly replays.
        let mut lookup = redis::pipe();
        for (_, id) in stored.iter().filter(|(created, _)| *created != 1) {
            lookup
                .get(keys::transfer(id))
                .sismember(keys::UNPUBLISHED_TRANSFERS, id);
        }
        let earlier: Vec<(Option<String>, bool)> = run_pipeline(&lookup, self.redis)
            .await
            .context("reading the transfers idempotency keys point at")?;
        let mut earlier = earlier.into_iter();

        let mut steps = Vec::with_capacity(transfers.len());
        for (transfer, (created, id)) in transfers.into_iter().zip(stored) {
            if created == 1 {
                steps.push(Step::New(transfer));
                continue;
            }
            let (json, unpublished) = earlier.next().expect("one lookup per replay");
            let json = json.with_context(|| {
                format!("idempotency key points at transfer {id}, which is gone")
            })?;
            let earlier = super::parse_stored(&id, &json)?;
            steps.push(
                if unpublished && earlier.status == TransferStatus::Initiated {
                    Step::Republish(earlier)
                } else {
                    Step::Earlier(earlier)
                },
            );
        }

        let outgoing: Vec<Outgoing> = steps
            .iter()
            .filter_map(|step| match step {
                Step::New(t) | Step::Republish(t) => Some(t),
                Step::Earlier(_) => None,
            })
            .map(|t| {
                Ok(Outgoing {
                    topic: self.topic.to_string(),
                    key: Some(t.sender_id.clone()),
                    payload: serde_json::to_vec(t)?,
                    headers: Vec::new(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut acks = produce_each(self.producer, &outgoing).await.into_iter();

        // Acknowledged: published. Not acknowledged and new: undone.
        let mut settle = redis::pipe();
        let mut outcomes = Vec::with_capacity(steps.len());
        for step in steps {
            let ack = match &step {
                Step::Earlier(_) => Ok(()),
                _ => acks.next().expect("one ack per published transfer"),
            };
            match (&step, &ack) {
                (Step::New(t) | Step::Republish(t), Ok(())) => {
                    settle.srem(keys::UNPUBLISHED_TRANSFERS, &t.transfer_id);
                }
                (Step::New(t), Err(_)) => {
                    let mut call = script_call(&DISCARD, t);
                    call.arg(&t.transfer_id);
                    settle.add_command(call);
                }
                _ => {}
            }
            outcomes.push((step, ack));
        }
        let settled: Vec<i64> = run_pipeline(&settle, self.redis)
            .await
            .context("recording which transfers were published")?;

        let mut settled = settled.into_iter();
        let mut results = Vec::with_capacity(outcomes.len());
        for (step, ack) in outcomes {
            results.push(match (step, ack) {
                (Step::Earlier(transfer), _) => Ok(Initiated {
                    transfer,
                    created: false,
                }),
                (Step::Republish(transfer), Ok(())) => {
                    settled.next();
                    Ok(Initiated {
                        transfer,
                        created: false,
                    })
                }
                (Step::Republish(transfer), Err(e)) => Err(e.context(format!(
                    "transfer {} is stored but still not published; run the same command again",
                    transfer.transfer_id
                ))),
                (Step::New(transfer), Ok(())) => {
                    settled.next();
                    Ok(Initiated {
                        transfer,
                        created: true,
                    })
                }
                (Step::New(transfer), Err(e)) => match settled.next() {
                    // Processed after all: the broker had it.
                    Some(0) => Ok(Initiated {
                        transfer,
                        created: true,
                    }),
                    _ => Err(e.context(format!(
                        "transfer from {} to {} was not published; nothing was initiated",
                        transfer.sender_id, transfer.receiver_id
                    ))),
                },
            });
        }
        Ok(results)
    }
}

/// What a `--file` run did.
#[derive(Debug, Serialize)]
pub struct BulkSummary {
    pub rows: usize,
    pub created: usize,
    /// Rows whose idempotency key had already created a transfer.
    pub existing: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
    pub per_second: u64,
}

impl Report for BulkSummary {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("rows", self.rows.to_string()),
            ("created", self.created.to_string()),
            ("existing", self.existing.to_string()),
            ("failed", self.failed.to_string()),
            ("seconds", format!("{:.2}", self.elapsed_ms as f64 / 1000.0)),
            ("per second", self.per_second.to_string()),
        ];
        rows.extend(self.errors.iter().take(20).map(|e| ("error", e.clone())));
        Rendered::Table(output::record_table(rows))
    }
}

/// Reads a JSON-lines or CSV file of transfer requests.
pub fn read_requests(path: &PathBuf) -> anyhow::Result<Vec<TransferRequest>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let rows = if first.trim_start().starts_with('{') {
        parse_jsonl(&text)
    } else {
        parse_csv(&text)
    };
    rows.with_context(|| format!("reading transfer requests from {}", path.display()))
}

fn parse_jsonl(text: &str) -> anyhow::Result<Vec<TransferRequest>> {
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let request = serde_json::from_str(line).with_context(|| format!("line {}", n + 1))?;
        requests.push(request);
    }
    Ok(requests)
}

fn parse_csv(text: &str) -> anyhow::Result<Vec<TransferRequest>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let columns: Vec<String> = split_csv(header)
        .into_iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let position = |names: &[&str]| columns.iter().position(|c| names.contains(&c.as_str()));
    let (Some(from), Some(to), Some(amount)) = (
        position(&["from", "sender_id"]),
        position(&["to", "receiver_id"]),
        position(&["amount"]),
    ) else {
        bail!("CSV header must name from, to and amount columns (got {header:?})");
    };
    let currency = position(&["currency"]);
    let key = position(&["idempotency_key"]);
    let mut requests = Vec::new();
    for (n, line) in lines {
        let cells = split_csv(line);
        let cell = |i: usize| cells.get(i).cloned().filter(|c| !c.is_empty());
        let line_no = n + 1;
        let required =
            |i: usize, name: &str| cell(i).with_context(|| format!("line {line_no}: no {name}"));
        let amount_text = required(amount, "amount")?;
        requests.push(TransferRequest {
            from: required(from, "from")?,
            to: required(to, "to")?,
            amount: Decimal::from_str(&amount_text)
                .with_context(|| format!("line {line_no}: invalid amount"))?,
            currency: currency.and_then(cell),
            idempotency_key: key.and_then(cell),
        });
    }
    Ok(requests)
}

/// Splits one CSV line; fields may be wrapped in double quotes.
fn split_csv(line: &str) -> Vec<String> {
    line.split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect()
}

const BULK_CHUNK: usize = 5000;

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    output: Output,
    show_progress: bool,
) -> anyhow::Result<()> {
    let mut publisher = Publisher {
        redis,
        producer,
        topic,
    };
    let Some(path) = &args.file else {
        let amount_text = args.amount.as_deref().unwrap_or_default();
        let request = TransferRequest {
            from: args.from.unwrap_or_default(),
            to: args.to.unwrap_or_default(),
            amount: Decimal::from_str(amount_text).context("invalid amount")?,
            currency: args.currency,
            idempotency_key: args.idempotency_key,
        };
        let transfers = match prepare(publisher.redis, &[request], |_| String::new()).await? {
            Ok(transfers) => transfers,
            Err(problems) => bail!("{}", problems.join("; ")),
        };
        let initiated = publisher
            .initiate(transfers)
            .await?
            .pop()
            .expect("one result")?;
        return output.emit(&initiated);
    };

    let started = Instant::now();
    let requests = read_requests(path)?;
    let transfers =
        match prepare(publisher.redis, &requests, |i| format!("row {}: ", i + 1)).await? {
            Ok(transfers) => transfers,
            Err(problems) => {
                let shown: Vec<&String> = problems.iter().take(20).collect();
                bail!(
                    "{} of {} rows are invalid; nothing was initiated:\n  {}",
                    problems.len(),
                    requests.len(),
                    shown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n  ")
                );
            }
        };
    let progress = output::progress_bar(transfers.len() as u64, show_progress);
    let mut summary = BulkSummary {
        rows: transfers.len(),
        created: 0,
        existing: 0,
        failed: 0,
        errors: Vec::new(),
        elapsed_ms: 0,
        per_second: 0,
    };
    let mut transfers = transfers.into_iter().peekable();
    while transfers.peek().is_some() {
        let chunk: Vec<Transfer> = transfers.by_ref().take(BULK_CHUNK).collect();
        let size = chunk.len() as u64;
        for result in publisher.initiate(chunk).await? {
            match result {
                Ok(Initiated { created: true, .. }) => summary.created += 1,
                Ok(Initiated { created: false, .. }) => summary.existing += 1,
                Err(e) => {
                    summary.failed += 1;
                    summary.errors.push(format!("{e:#}"));
                }
            }
        }
        progress.inc(size);
    }
    progress.finish_and_clear();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary.per_second = (summary.rows as f64 / started.elapsed().as_secs_f64().max(1e-9)) as u64;
    output.emit(&summary)?;
    if summary.failed > 0 {
        bail!(
            "{} of {} transfers were not initiated",
            summary.failed,
            summary.rows
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> HashMap<String, Account> {
        let usd = Currency::parse("USD").unwrap();
        let eur = Currency::parse("EUR").unwrap();
        [("alice", usd), ("bob", usd), ("eve", eur)]
            .into_iter()
            .map(|(id, currency)| {
                let account = Account {
                    id: id.into(),
                    currency,
                    balance: Money::from_minor(0, currency),
                    opened_at: String::new(),
                };
                (id.to_string(), account)
            })
            .collect()
    }

    fn request(from: &str, to: &str, amount: &str) -> TransferRequest {
        TransferRequest {
            from: from.into(),
            to: to.into(),
            amount: amount.parse().unwrap(),
            currency: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn builds_seed_001_records() {
        let transfer = validate(&request("alice", "bob", "12.50"), &accounts()).unwrap();
        assert_eq!(transfer.version, 1);
        assert_eq!(transfer.status, TransferStatus::Initiated);
        let json: serde_json::Value = serde_json::to_value(&transfer).unwrap();
        assert_eq!(json["amount"].to_string(), "12.50");
        assert_eq!(json["sender_id"], "alice");
        assert_eq!(json["currency"], "USD");
    }

    #[test]
    fn refuses_bad_requests_with_reasons() {
        let accounts = accounts();
        let refuse = |r: TransferRequest| validate(&r, &accounts).unwrap_err();
        assert!(refuse(request("alice", "alice", "1")).contains("same account"));
        assert!(refuse(request("alice", "zed", "1")).contains("unknown account \"zed\""));
        assert!(refuse(request("alice", "eve", "1")).contains("currency mismatch"));
        assert!(refuse(request("alice", "bob", "-1")).contains("greater than zero"));
        assert!(refuse(request("alice", "bob", "1.001")).contains("decimal places"));
        let mut odd = request("alice", "bob", "1");
        odd.currency = Some("XYZ".into());
        assert!(refuse(odd).contains("unknown currency"));
    }

    #[test]
    fn reads_csv_and_jsonl() {
        let csv =
            parse_csv("from,to,amount,currency\nalice,bob,12.50,USD\n\"bob\",alice,1,\n").unwrap();
        assert_eq!(csv.len(), 2);
        assert_eq!(csv[0].amount.to_string(), "12.50");
        assert_eq!(csv[1].from, "bob");
        assert_eq!(csv[1].currency, None);
        let jsonl =
            parse_jsonl("{\"sender_id\":\"a\",\"receiver_id\":\"b\",\"amount\":0.30}\n\n").unwrap();
        assert_eq!(jsonl[0].amount.to_string(), "0.30");
        assert!(parse_csv("a,b\n1,2").is_err());
    }
}

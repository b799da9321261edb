//! `payctl transfer initiate`: validate, store `transfer:{id}` (version 1,
//! status initiated), publish it to `money_transfers`, wait for the ack.
//!
//! Order of effects: Redis first, then Kafka. If the broker does not ack,
//! the record is removed again, so a failed initiate leaves nothing behind;
//! a late delivery of such a message finds no record and is dead-lettered by
//! `transfer process` rather than applied. The one exception: a transfer that
//! a replay of its idempotency key (or `transfer resend`) has taken over in
//! the meantime stays, since that run reports and publishes it.
//!
//! Idempotency keys behave as payment APIs' do: the same key with the same
//! sender, receiver, amount (by value) and currency returns the first
//! transfer; with other parameters it is refused and changes nothing. Rows
//! of a `--file` without a key get one derived from the file's SHA-256 and
//! the row's number, so a file can always be run again.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::producer::{FutureProducer, Producer as _};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::{self, Account};
use crate::exit::{refuse, Interrupted};
use crate::kafka::{produce_each, Outgoing};
use crate::money::{Currency, Decimal, Money};
use crate::output::{self, Output, Rendered, Report};
use crate::store::{keys, run_pipeline, Redis, Script};
use crate::transfer::rows::RequestSource;
#[cfg(test)]
use crate::transfer::rows::{CsvRows, JsonRows, Row};
use crate::transfer::{Transfer, TransferStatus};

/// Start a transfer between two accounts (or many, from a file).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transfer initiate --from alice --to bob --amount 12.50
  payctl transfer initiate --from alice --to bob --amount 12.50 --idempotency-key order-1842
  payctl transfer initiate --file batch.jsonl      # {\"from\":\"alice\",\"to\":\"bob\",\"amount\":\"12.50\"} per line
  payctl transfer initiate --file batch.csv        # header: from,to,amount[,currency][,idempotency_key]
  payctl transfer initiate --file batch.csv        # again after a failure: nothing twice
  produce-rows | payctl transfer initiate --file - -o json   # standard input; JSON lists the created ids
  payctl transfer initiate --file payroll.csv --fresh  # new transfers on every run
  payctl transfer initiate --file load.jsonl --rate 5000   # a steady 5,000 rows/s (a load test)")]
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
    /// A repeated key with the same parameters returns the first transfer and
    /// creates nothing; with other parameters it is refused (exit 1).
    /// 1 to 200 bytes, no control characters.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Initiate every row of a JSON-lines or CSV file (`-`: standard
    /// input). All rows are checked before any is written. Rows without an
    /// idempotency key get one made of the file's SHA-256 and the row
    /// number, so running the same file again creates nothing twice. The
    /// first Ctrl-C stops after the chunk in hand, with a summary.
    #[arg(long, conflicts_with_all = SINGLE_FLAGS)]
    pub file: Option<PathBuf>,
    /// With --file: rows without an idempotency key create new transfers
    /// on every run (for a file meant to repeat). Such a run cannot be
    /// resumed by running it again.
    // `requires` alone lets them through beside --from (clap drops the
    // requirement of an argument that conflicts with one given), hence the
    // conflicts as well.
    #[arg(long, requires = "file", conflicts_with_all = SINGLE_FLAGS)]
    pub fresh: bool,
    /// With --file: initiate at most this many rows per second, spread
    /// evenly (chunks of a hundredth of a second), for a load test or a
    /// downstream that must not be flooded. Without it, as fast as Redis
    /// and the broker take them.
    #[arg(long, requires = "file", conflicts_with_all = SINGLE_FLAGS, value_name = "ROWS_PER_SEC",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
}

/// The flags of a single transfer, which `--file` and its options exclude.
const SINGLE_FLAGS: [&str; 5] = ["from", "to", "amount", "currency", "idempotency_key"];

/// One transfer to initiate, from flags or one row of a file. A field it
/// does not know (a mistyped `idempotency_key`) is refused, not ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    #[serde(alias = "sender_id")]
    pub from: String,
    #[serde(alias = "receiver_id")]
    pub to: String,
    /// Plain digits: a person wrote the file, so no exponent.
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    pub amount: Decimal,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A transfer after initiate: the record, and whether this call created it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Initiated {
    #[serde(flatten, serialize_with = "super::serialize_for_output")]
    #[schema(value_type = crate::transfer::TransferView)]
    pub transfer: Transfer,
    /// False when an idempotency key returned an earlier transfer.
    pub created: bool,
}

impl Report for Initiated {
    fn render(&self) -> Rendered {
        Rendered::Line(self.transfer.transfer_id.clone())
    }
}

/// Why a request cannot be initiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    /// The answer is no (an account that does not exist: exit 1) rather
    /// than bad input (exit 2).
    pub refusal: bool,
}

impl From<String> for Problem {
    fn from(message: String) -> Problem {
        Problem {
            message,
            refusal: false,
        }
    }
}

/// Checks one request against the accounts it names and builds its record.
fn validate(
    request: &TransferRequest,
    accounts: &HashMap<String, Account>,
) -> Result<Transfer, Problem> {
    let account = |id: &str| {
        accounts::validate_id(id).map_err(|e| e.to_string())?;
        accounts.get(id).ok_or_else(|| Problem {
            message: format!("unknown account {id:?}"),
            refusal: true,
        })
    };
    if request.from == request.to {
        return Err(format!(
            "sender and receiver are the same account ({:?})",
            request.from
        )
        .into());
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
            )
            .into());
        }
    }
    let amount =
        Money::amount(request.amount, currency).map_err(|e| format!("invalid amount: {e}"))?;
    if let Some(key) = &request.idempotency_key {
        validate_idempotency_key(key)?;
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
) -> anyhow::Result<Result<Vec<Transfer>, Vec<Problem>>> {
    let ids = requests
        .iter()
        .flat_map(|r| [r.from.clone(), r.to.clone()])
        .filter(|id| accounts::validate_id(id).is_ok())
        .collect();
    let known = known_accounts(redis, ids).await?;
    let mut transfers = Vec::with_capacity(requests.len());
    let mut problems = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        match validate(request, &known) {
            Ok(transfer) => transfers.push(transfer),
            Err(problem) => problems.push(Problem {
                message: format!("{}{}", label(i), problem.message),
                ..problem
            }),
        }
    }
    Ok(if problems.is_empty() {
        Ok(transfers)
    } else {
        Err(problems)
    })
}

/// The accounts among `ids` that exist, looked up 1,000 at a time.
async fn known_accounts(
    redis: &mut Redis,
    ids: HashSet<String>,
) -> anyhow::Result<HashMap<String, Account>> {
    let ids: Vec<String> = ids.into_iter().collect();
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
    Ok(known)
}

static INITIATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&[include_str!("canonical.lua"), include_str!("initiate.lua")].concat())
});
static DISCARD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("discard.lua")));

/// KEYS of both scripts, in their order.
fn record_keys(transfer: &Transfer) -> Vec<String> {
    let mut keys = vec![
        keys::transfer(&transfer.transfer_id),
        keys::TRANSFERS.to_string(),
        keys::UNPUBLISHED_TRANSFERS.to_string(),
        keys::PENDING_TRANSFERS.to_string(),
        keys::ADOPTED_TRANSFERS.to_string(),
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

/// Checks an idempotency key before it goes into a Redis key name.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || key.chars().any(char::is_control) {
        return Err(format!(
            "invalid idempotency key {key:?}: use 1 to {MAX_IDEMPOTENCY_KEY} bytes, no control characters"
        ));
    }
    Ok(())
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The broker did not acknowledge a transfer's message. A `--file` run
/// stops at the first one: the next rows would most likely fail the same way.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotAcknowledged(String);

/// Where initiated transfers go.
pub struct Publisher<'a> {
    pub redis: &'a mut Redis,
    pub producer: &'a FutureProducer,
    pub topic: &'a str,
}

/// What one transfer of a chunk needs after the INITIATE script ran.
enum Step {
    /// Created now, with the JSON stored: publish; undo on failure.
    New(Transfer, Vec<u8>),
    /// An idempotency key's earlier transfer, already published.
    Earlier(Transfer),
    /// An earlier transfer whose publishing never finished, now adopted by
    /// this run: publish its stored bytes again (processing is idempotent by
    /// version, so a second copy is harmless).
    Republish(Transfer, Vec<u8>),
    /// Nothing to publish: the key was refused or names a broken transfer.
    Failed(anyhow::Error),
}

impl Step {
    /// Reads the script's answer for `transfer` (see initiate.lua).
    fn from_reply(transfer: Transfer, json: Vec<u8>, reply: Vec<Vec<u8>>) -> Step {
        let field = |i: usize| {
            reply
                .get(i)
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let key = transfer.idempotency_key.clone().unwrap_or_default();
        let (answer, id) = (field(0), field(1));
        match answer.as_str() {
            "created" => Step::New(transfer, json),
            "earlier" | "adopted" => {
                let record = reply.get(2).cloned().unwrap_or_default();
                let earlier = std::str::from_utf8(&record)
                    .context("it is not UTF-8")
                    .and_then(|json| super::parse_stored(&id, json));
                match earlier {
                    Ok(earlier) if answer == "adopted" => Step::Republish(earlier, record),
                    Ok(earlier) => Step::Earlier(earlier),
                    Err(e) => Step::Failed(e.context(format!(
                        "idempotency key {key} names transfer {id}, which payctl cannot read"
                    ))),
                }
            }
            "different" => Step::Failed(refuse(format!(
                "idempotency key {key} was used for a different transfer"
            ))),
            "gone" => Step::Failed(anyhow!(
                "idempotency key {key} names transfer {id}, but {}",
                field(2)
            )),
            "invalid" => Step::Failed(anyhow!(
                "idempotency key {key} cannot be read: {}",
                field(1)
            )),
            other => Step::Failed(anyhow!(
                "unexpected answer {other:?} from the INITIATE script"
            )),
        }
    }
}

impl Publisher<'_> {
    /// Stores and publishes prepared transfers: one pipelined Redis round
    /// trip, all messages in flight at once, then every ack awaited. A
    /// transfer stays in `transfers:unpublished` until its ack; one whose
    /// message is not acknowledged is removed again (unless a replay of its
    /// key took it over) and comes back as an error.
    ///
    /// `Err` means Redis failed for the whole chunk: some of its transfers
    /// may be stored and not yet published (a replay of their keys, or
    /// `transfer resend`, publishes them).
    pub async fn initiate(
        &mut self,
        transfers: Vec<Transfer>,
    ) -> anyhow::Result<Vec<anyhow::Result<Initiated>>> {
        if transfers.is_empty() {
            return Ok(Vec::new());
        }
        if self.redis.is_cluster() {
            return self.initiate_across_slots(transfers).await;
        }
        for script in [&*INITIATE, &*DISCARD] {
            script.load(self.redis).await?;
        }
        let score = crate::clock::now_millis();
        let record_prefix = keys::transfer("");
        let mut pipe = redis::pipe();
        let mut records = Vec::with_capacity(transfers.len());
        for transfer in &transfers {
            let json = serde_json::to_vec(transfer)?;
            let mut call = script_call(&INITIATE, transfer);
            call.arg(&json[..])
                .arg(&transfer.transfer_id)
                .arg(score)
                .arg(&transfer.sender_id)
                .arg(&transfer.receiver_id)
                .arg(transfer.amount.to_string())
                .arg(transfer.currency.as_deref().unwrap_or(""))
                .arg(&record_prefix);
            pipe.add_command(call);
            records.push(json);
        }
        let replies: Vec<Vec<Vec<u8>>> = pipe
            .query_async(self.redis)
            .await
            .context("storing transfers in Redis")?;
        let steps: Vec<Step> = transfers
            .into_iter()
            .zip(records)
            .zip(replies)
            .map(|((transfer, json), reply)| Step::from_reply(transfer, json, reply))
            .collect();

        let outgoing = self.to_publish(&steps);
        let mut acks = produce_each(self.producer, &outgoing).await.into_iter();

        // Acknowledged: published. Not acknowledged and new: undone, unless
        // processed after all or adopted by a replay.
        let mut settle = redis::pipe();
        let mut outcomes = Vec::with_capacity(steps.len());
        for step in steps {
            let ack = match &step {
                Step::New(..) | Step::Republish(..) => {
                    acks.next().expect("one ack per published transfer")
                }
                Step::Earlier(_) | Step::Failed(_) => Ok(()),
            };
            match (&step, &ack) {
                (Step::New(t, _) | Step::Republish(t, _), Ok(())) => {
                    settle
                        .srem(keys::UNPUBLISHED_TRANSFERS, &t.transfer_id)
                        .ignore()
                        .srem(keys::ADOPTED_TRANSFERS, &t.transfer_id)
                        .ignore();
                }
                (Step::New(t, _), Err(_)) => {
                    let mut call = script_call(&DISCARD, t);
                    call.arg(&t.transfer_id);
                    settle.add_command(call);
                }
                _ => {}
            }
            outcomes.push((step, ack));
        }
        let discarded: Vec<i64> = run_pipeline(&settle, self.redis)
            .await
            .context("recording which transfers were published")?;

        let mut discarded = discarded.into_iter();
        let mut results = Vec::with_capacity(outcomes.len());
        for (step, ack) in outcomes {
            results.push(match (step, ack) {
                (Step::Failed(e), _) => Err(e),
                (Step::Earlier(transfer), _) | (Step::Republish(transfer, _), Ok(())) => {
                    Ok(Initiated {
                        transfer,
                        created: false,
                    })
                }
                (Step::Republish(transfer, _), Err(e)) => Err(e.context(NotAcknowledged(format!(
                    "transfer {} is stored but still not published; run the same command again \
                     (or payctl transfer resend)",
                    transfer.transfer_id
                )))),
                (Step::New(transfer, _), Ok(())) => Ok(Initiated {
                    transfer,
                    created: true,
                }),
                (Step::New(transfer, _), Err(e)) => match discarded.next() {
                    // Processed after all: the broker had it.
                    Some(0) => Ok(Initiated {
                        transfer,
                        created: true,
                    }),
                    Some(2) => Err(e.context(NotAcknowledged(format!(
                        "transfer {} was stored, but its message was not acknowledged; a replay \
                         of its idempotency key (or payctl transfer resend) took it over and \
                         publishes it, so it stays initiated",
                        transfer.transfer_id
                    )))),
                    _ => Err(e.context(NotAcknowledged(format!(
                        "transfer from {} to {} was not published; nothing was initiated",
                        transfer.sender_id, transfer.receiver_id
                    )))),
                },
            });
        }
        Ok(results)
    }
}

impl Publisher<'_> {
    /// The messages of the steps that publish: new transfers, and adopted
    /// ones whose publish did not finish, keyed by sender.
    fn to_publish(&self, steps: &[Step]) -> Vec<Outgoing> {
        steps
            .iter()
            .filter_map(|step| match step {
                Step::New(t, json) | Step::Republish(t, json) => Some(Outgoing {
                    topic: self.topic.to_string(),
                    key: Some(t.sender_id.clone()),
                    payload: json.clone(),
                    headers: Vec::new(),
                }),
                Step::Earlier(_) | Step::Failed(_) => None,
            })
            .collect()
    }

    /// [`Publisher::initiate`] on a Redis Cluster (see [`super::saga`]): a
    /// transfer with an idempotency key takes its id from the key, so the key
    /// and its transfer are one record, stored or found in one atomic step.
    async fn initiate_across_slots(
        &mut self,
        transfers: Vec<Transfer>,
    ) -> anyhow::Result<Vec<anyhow::Result<Initiated>>> {
        let score = crate::clock::now_millis();
        let mut steps = Vec::with_capacity(transfers.len());
        for mut transfer in transfers {
            if let Some(key) = &transfer.idempotency_key {
                transfer.transfer_id = super::saga::id_for_key(key);
            }
            let json = serde_json::to_vec(&transfer)?;
            let key = transfer.idempotency_key.clone().unwrap_or_default();
            let id = transfer.transfer_id.clone();
            let read = |record: Vec<u8>| {
                std::str::from_utf8(&record)
                    .context("it is not UTF-8")
                    .and_then(|json| super::parse_stored(&id, json))
                    .map(|earlier| (earlier, record.clone()))
                    .with_context(|| {
                        format!(
                            "idempotency key {key} names transfer {id}, which payctl cannot read"
                        )
                    })
            };
            steps.push(
                match super::saga::store_new(self.redis, &transfer, &json, score).await? {
                    super::saga::Stored::Created => Step::New(transfer, json),
                    super::saga::Stored::Earlier(record) => match read(record) {
                        Ok((earlier, _)) => Step::Earlier(earlier),
                        Err(e) => Step::Failed(e),
                    },
                    super::saga::Stored::Adopted(record) => match read(record) {
                        Ok((earlier, record)) => Step::Republish(earlier, record),
                        Err(e) => Step::Failed(e),
                    },
                    super::saga::Stored::Different => Step::Failed(refuse(format!(
                        "idempotency key {key} was used for a different transfer"
                    ))),
                },
            );
        }
        let outgoing = self.to_publish(&steps);
        let mut acks = produce_each(self.producer, &outgoing).await.into_iter();
        let mut results = Vec::with_capacity(steps.len());
        for step in steps {
            let ack = match &step {
                Step::New(..) | Step::Republish(..) => {
                    acks.next().expect("one ack per published transfer")
                }
                Step::Earlier(_) | Step::Failed(_) => Ok(()),
            };
            results.push(match (step, ack) {
                (Step::Failed(e), _) => Err(e),
                (Step::Earlier(transfer), _) => Ok(Initiated {
                    transfer,
                    created: false,
                }),
                (Step::New(transfer, _), Ok(())) => {
                    super::saga::published(self.redis, &transfer.transfer_id).await?;
                    Ok(Initiated {
                        transfer,
                        created: true,
                    })
                }
                (Step::Republish(transfer, _), Ok(())) => {
                    super::saga::published(self.redis, &transfer.transfer_id).await?;
                    Ok(Initiated {
                        transfer,
                        created: false,
                    })
                }
                (Step::Republish(transfer, _), Err(e)) => Err(e.context(NotAcknowledged(format!(
                    "transfer {} is stored but still not published; run the same command again",
                    transfer.transfer_id
                )))),
                (Step::New(transfer, json), Err(e)) => {
                    if super::saga::discard_one(self.redis, &transfer.transfer_id, &json).await? {
                        Err(e.context(NotAcknowledged(format!(
                            "transfer from {} to {} was not published; nothing was initiated",
                            transfer.sender_id, transfer.receiver_id
                        ))))
                    } else {
                        Err(e.context(NotAcknowledged(format!(
                            "transfer {} was stored, but its message was not acknowledged; a \
                             worker, a replay of its idempotency key or payctl transfer resend \
                             took it over (or published it), so it stays initiated",
                            transfer.transfer_id
                        ))))
                    }
                }
            });
        }
        Ok(results)
    }
}

/// What a `--file` run did.
#[derive(Debug, Serialize)]
pub struct BulkSummary {
    pub rows: usize,
    /// Rows whose transfer exists now: `created` + `existing`.
    pub initiated: usize,
    pub created: usize,
    /// Rows whose idempotency key had already created a transfer.
    pub existing: usize,
    pub failed: usize,
    /// The first row not initiated when the run stopped early (a broker or
    /// Redis failure, or Ctrl-C); rows before it are settled. `None` when it
    /// ran through.
    pub stopped_at_row: Option<usize>,
    /// True when SIGINT/SIGTERM stopped it after the chunk in hand.
    pub interrupted: bool,
    /// Why it stopped.
    pub error: Option<String>,
    /// The first [`MAX_ERRORS_SHOWN`] row errors, each with its row number.
    pub errors: Vec<String>,
    /// The ids of the transfers this run created, in row order: the first
    /// [`MAX_CREATED_IDS`] (`created` counts them all).
    pub created_ids: Vec<String>,
    pub elapsed_ms: u64,
    pub per_second: u64,
}

/// Created ids a summary lists: a million would be 37 MB of output.
pub const MAX_CREATED_IDS: usize = 10_000;

/// Row errors a summary keeps; `failed` counts them all.
pub const MAX_ERRORS_SHOWN: usize = 100;

impl Report for BulkSummary {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("rows", self.rows.to_string()),
            ("initiated", self.initiated.to_string()),
            ("created", self.created.to_string()),
            ("existing", self.existing.to_string()),
            ("failed", self.failed.to_string()),
        ];
        if let Some(row) = self.stopped_at_row {
            rows.push(("stopped at row", row.to_string()));
        }
        if self.interrupted {
            rows.push(("stopped by", "interrupt (Ctrl-C)".into()));
        }
        if let Some(error) = &self.error {
            rows.push(("stopped by", error.clone()));
        }
        rows.extend([
            ("seconds", format!("{:.2}", self.elapsed_ms as f64 / 1000.0)),
            ("per second", self.per_second.to_string()),
        ]);
        rows.extend(self.errors.iter().take(20).map(|e| ("error", e.clone())));
        Rendered::Table(output::record_table(rows))
    }
}

/// Gives a request of row `row` (1-based, as in error messages) of the
/// file whose digest is `digest` a key, when it has none: the same file run
/// again names the same transfers.
pub fn derive_key(request: &mut TransferRequest, digest: &str, row: usize) {
    if request.idempotency_key.is_none() {
        request.idempotency_key = Some(derived_key(digest, row));
    }
}

/// The idempotency key of row `row` of the file whose digest is `digest`.
pub fn derived_key(digest: &str, row: usize) -> String {
    format!("file:{digest}:{row}")
}

/// Hex of the first 128 bits of the SHA-256 of `bytes`: collisions are out
/// of reach, and a derived key stays short (it is kept per row in Redis).
pub fn file_digest(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    digest_text(&Sha256::digest(bytes))
}

/// A file's digest as derived keys carry it: hex of the first 128 bits of
/// its SHA-256 (`sha256`), however the hash was computed.
pub fn digest_text(sha256: &[u8]) -> String {
    sha256[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Rows listed in one error message; the count says how many more there are.
const MAX_PROBLEMS_SHOWN: usize = 100;

/// One error listing the rows that cannot be used: `problems` are the
/// first of `count`.
fn bad_rows(problems: &[String], count: usize, rows: usize, what: &str) -> anyhow::Error {
    let mut listed = problems
        .iter()
        .take(MAX_PROBLEMS_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n  ");
    let shown = problems.len().min(MAX_PROBLEMS_SHOWN);
    if count > shown {
        listed.push_str(&format!("\n  … and {} more", count - shown));
    }
    anyhow!("{count} of {rows} rows {what}; nothing was initiated:\n  {listed}")
}

/// Every row, or one error listing the rows that cannot be read.
#[cfg(test)]
fn collect_rows(rows: impl Iterator<Item = Row>) -> anyhow::Result<Vec<TransferRequest>> {
    let mut requests = Vec::new();
    let mut problems = Vec::new();
    for row in rows {
        match row {
            Ok(request) => requests.push(request),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        let rows = requests.len() + problems.len();
        return Err(bad_rows(&problems, problems.len(), rows, "cannot be read"));
    }
    Ok(requests)
}

#[cfg(test)]
fn parse_jsonl(text: &str) -> anyhow::Result<Vec<TransferRequest>> {
    collect_rows(JsonRows::new(text.as_bytes()))
}

#[cfg(test)]
fn parse_csv(text: &str) -> anyhow::Result<Vec<TransferRequest>> {
    collect_rows(CsvRows::new(text.as_bytes())?)
}

/// Fails, with the command that fixes it, when the broker says `topic`
/// does not exist: brokers such as Tansu create a topic on first produce,
/// and a transfer on a topic no worker reads is never processed. Asks for
/// every topic: a producer's request for one named topic lets the broker
/// create it.
///
/// A broker that does not answer in time is not a missing topic: the
/// publish that follows fails the same way and the transfer is rolled back
/// (nothing is initiated), as it always was.
fn check_topic_exists(producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    let metadata = match producer.client().fetch_metadata(None, METADATA_TIMEOUT) {
        Ok(metadata) => metadata,
        Err(e) => {
            // Said once, by the publish that fails next, not twice.
            tracing::debug!("could not check that topic {topic} exists: {e}");
            return Ok(());
        }
    };
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        bail!(
            "missing topic: {topic} (create it: payctl topics create {topic}); nothing was initiated"
        );
    }
    Ok(())
}

/// How long the topic check waits for the broker.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// The error for problems found before anything was written: a refusal
/// (exit 1) when every one is.
/// `rows`: the count of problems (`problems` are the first of them) and of rows.
fn problems_error(problems: Vec<Problem>, rows: Option<(usize, usize)>) -> anyhow::Error {
    let refusal = problems.iter().all(|p| p.refusal);
    let messages: Vec<String> = problems.into_iter().map(|p| p.message).collect();
    let error = match rows {
        None => anyhow!("{}", messages.join("; ")),
        Some((count, rows)) => bad_rows(&messages, count, rows, "are invalid"),
    };
    if refusal {
        refuse(format!("{error}"))
    } else {
        error
    }
}

const BULK_CHUNK: usize = 2000;

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    output: Output,
    show_progress: bool,
    shutdown: CancellationToken,
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
            amount: Decimal::parse_typed(amount_text).context("invalid amount")?,
            currency: args.currency,
            idempotency_key: args.idempotency_key,
        };
        check_topic_exists(producer, topic)?;
        let transfers = match prepare(publisher.redis, &[request], |_| String::new()).await? {
            Ok(transfers) => transfers,
            Err(problems) => return Err(problems_error(problems, None)),
        };
        let initiated = publisher
            .initiate(transfers)
            .await?
            .pop()
            .expect("one result")?;
        return output.emit(&initiated);
    };

    let started = Instant::now();
    let source = RequestSource::open(path)?;
    let reading =
        |e: anyhow::Error| e.context(format!("reading transfer requests from {}", source.name));
    // Pass 1: every row readable, and the accounts they name.
    let mut ids = HashSet::new();
    let mut unreadable = Vec::new();
    let (mut rows, mut unreadable_count) = (0, 0);
    for row in source.rows().map_err(reading)? {
        rows += 1;
        match row {
            Ok(request) => {
                for id in [request.from, request.to] {
                    if accounts::validate_id(&id).is_ok() {
                        ids.insert(id);
                    }
                }
            }
            Err(problem) => {
                unreadable_count += 1;
                if unreadable.len() < MAX_PROBLEMS_SHOWN {
                    unreadable.push(problem);
                }
            }
        }
    }
    if unreadable_count > 0 {
        return Err(reading(bad_rows(
            &unreadable,
            unreadable_count,
            rows,
            "cannot be read",
        )));
    }
    check_topic_exists(producer, topic)?;
    let known = known_accounts(publisher.redis, ids).await?;
    // Pass 2: every row checked before any is written.
    let keyed = |i: usize, mut request: TransferRequest| {
        if !args.fresh {
            derive_key(&mut request, &source.digest, i + 1);
        }
        request
    };
    let mut problems = Vec::new();
    let mut problem_count = 0;
    for (i, row) in source.rows().map_err(reading)?.enumerate() {
        let request = keyed(
            i,
            row.map_err(|e| anyhow!("{} changed while it was read: {e}", source.name))?,
        );
        if let Err(problem) = validate(&request, &known) {
            problem_count += 1;
            if problems.len() < MAX_PROBLEMS_SHOWN {
                problems.push(Problem {
                    message: format!("row {}: {}", i + 1, problem.message),
                    ..problem
                });
            }
        }
    }
    if problem_count > 0 {
        return Err(problems_error(problems, Some((problem_count, rows))));
    }
    // Pass 3: written chunk by chunk, never holding the whole file.
    let transfers =
        source
            .rows()
            .map_err(reading)?
            .enumerate()
            .map(|(i, row)| -> anyhow::Result<Transfer> {
                let request = keyed(i, row.map_err(|e| anyhow!("{e}"))?);
                validate(&request, &known).map_err(|p| anyhow!("row {}: {}", i + 1, p.message))
            });
    let progress = output::progress_bar(rows as u64, show_progress);
    let mut summary = BulkSummary {
        rows,
        initiated: 0,
        created: 0,
        existing: 0,
        failed: 0,
        stopped_at_row: None,
        interrupted: false,
        error: None,
        errors: Vec::new(),
        created_ids: Vec::new(),
        elapsed_ms: 0,
        per_second: 0,
    };
    let again = if args.fresh {
        "--fresh rows have no key: running the file again creates the initiated ones again"
    } else {
        "run the same command again to finish: rows already initiated are not created twice"
    };
    let mut refused = 0;
    let mut done = 0;
    let mut redis_failed = false;
    // Paced: a hundredth of a second's rows per chunk, each chunk due at
    // its place on a steady line from the first.
    let chunk_rows = args.rate.map_or(BULK_CHUNK, |rate| {
        (rate as usize / 100).clamp(1, BULK_CHUNK)
    });
    let paced_from = tokio::time::Instant::now();
    let mut transfers = transfers.into_iter().peekable();
    while transfers.peek().is_some() {
        if let Some(rate) = args.rate {
            let due = paced_from + Duration::from_secs_f64(done as f64 / f64::from(rate));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        // Stop between chunks, never in the middle of one.
        if shutdown.is_cancelled() {
            summary.stopped_at_row = Some(done + 1);
            summary.interrupted = true;
            break;
        }
        let chunk: Vec<Transfer> = transfers
            .by_ref()
            .take(chunk_rows)
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("{} changed while it was read", source.name))?;
        let size = chunk.len();
        crate::exit::set_abandon_note(Some(format!(
            "rows {} to {} of {} were being stored and published; some of them may be stored \
             in Redis and unpublished (transfers:unpublished): payctl transfer resend publishes \
             them{}",
            done + 1,
            done + size,
            summary.rows,
            if args.fresh {
                ""
            } else {
                " (running the same command again finishes the file too)"
            }
        )));
        let results = match publisher.initiate(chunk).await {
            Ok(results) => results,
            Err(e) => {
                // Redis failed for the whole chunk: some of its rows may be
                // stored and unpublished; a re-run (or resend) finishes them.
                summary.stopped_at_row = Some(done + 1);
                summary.error = Some(format!("{e:#}"));
                redis_failed = true;
                break;
            }
        };
        for (i, result) in results.into_iter().enumerate() {
            let row = done + i + 1;
            match result {
                Ok(Initiated {
                    transfer,
                    created: true,
                }) => {
                    summary.created += 1;
                    if summary.created_ids.len() < MAX_CREATED_IDS {
                        summary.created_ids.push(transfer.transfer_id);
                    }
                }
                Ok(Initiated { created: false, .. }) => summary.existing += 1,
                Err(e) => {
                    summary.failed += 1;
                    if crate::exit::exit_for(&e) == crate::exit::Exit::No {
                        refused += 1;
                    }
                    let message = format!("row {row}: {e:#}");
                    let unacknowledged = e.downcast_ref::<NotAcknowledged>().is_some();
                    if unacknowledged && summary.stopped_at_row.is_none() {
                        summary.stopped_at_row = Some(row);
                        summary.error = Some(message.clone());
                    }
                    if summary.errors.len() < MAX_ERRORS_SHOWN {
                        summary.errors.push(message);
                    }
                }
            }
        }
        done += size;
        progress.inc(size as u64);
        if summary.stopped_at_row.is_some() {
            break;
        }
    }
    crate::exit::set_abandon_note(None);
    progress.finish_and_clear();
    summary.initiated = summary.created + summary.existing;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    summary.per_second = (done as f64 / started.elapsed().as_secs_f64().max(1e-9)) as u64;
    output.emit(&summary)?;
    if let (Some(row), true) = (summary.stopped_at_row, summary.interrupted) {
        return Err(anyhow::Error::new(Interrupted(format!(
            "interrupted at row {row} of {}: {} rows initiated; {again}",
            summary.rows, summary.initiated
        ))));
    }
    if let (Some(row), Some(error)) = (summary.stopped_at_row, &summary.error) {
        let unpublished = if redis_failed {
            " Rows of the chunk in hand may be stored and unpublished: payctl transfer resend \
             publishes them."
        } else {
            ""
        };
        bail!(
            "stopped at row {row} of {}: {} rows initiated; {again}.{unpublished} {error}",
            summary.rows,
            summary.initiated
        );
    }
    if summary.failed > 0 {
        let message = format!(
            "{} of {} transfers were not initiated",
            summary.failed, summary.rows
        );
        if refused == summary.failed {
            return Err(refuse(message));
        }
        bail!(message);
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
    fn builds_records_in_the_versioned_transfer_services_shape() {
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
        let refuse = |r: TransferRequest| validate(&r, &accounts).unwrap_err().message;
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
    fn idempotency_keys_are_bounded_and_printable() {
        assert!(validate_idempotency_key("order-1842").is_ok());
        assert!(validate_idempotency_key(&"k".repeat(200)).is_ok());
        // 200 bytes, not characters: "é" is two.
        assert!(validate_idempotency_key(&"é".repeat(101)).is_err());
        for bad in ["", "a\tb", "a\nb", "\u{7f}", "\u{85}"] {
            let problem = validate_idempotency_key(bad).unwrap_err();
            assert!(
                problem.contains("invalid idempotency key"),
                "{bad:?}: {problem}"
            );
        }
        let mut with_bad_key = request("alice", "bob", "1");
        with_bad_key.idempotency_key = Some("x\u{0}y".into());
        assert!(validate(&with_bad_key, &accounts())
            .unwrap_err()
            .message
            .contains("invalid idempotency key"));
    }

    #[test]
    fn file_rows_get_keys_from_the_content_and_the_row() {
        let digest = file_digest(b"from,to,amount\nalice,bob,1\n");
        assert_eq!(digest.len(), 32);
        assert_eq!(digest, file_digest(b"from,to,amount\nalice,bob,1\n"));
        assert_ne!(digest, file_digest(b"from,to,amount\nalice,bob,2\n"));
        // SHA-256("abc"), first 128 bits.
        assert_eq!(file_digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
        let mut keyed = request("alice", "bob", "1");
        keyed.idempotency_key = Some("mine".into());
        let mut requests = [
            request("alice", "bob", "1"),
            keyed,
            request("alice", "bob", "1"),
        ];
        for (i, request) in requests.iter_mut().enumerate() {
            derive_key(request, &digest, i + 1);
        }
        let keys: Vec<&str> = requests
            .iter()
            .map(|r| r.idempotency_key.as_deref().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                format!("file:{digest}:1").as_str(),
                "mine",
                &format!("file:{digest}:3")
            ]
        );
        assert!(keys.iter().all(|k| validate_idempotency_key(k).is_ok()));
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

    #[test]
    fn unknown_accounts_are_refusals_and_other_problems_are_not() {
        let accounts = accounts();
        assert!(
            validate(&request("alice", "zed", "1"), &accounts)
                .unwrap_err()
                .refusal
        );
        assert!(
            !validate(&request("alice", "eve", "1"), &accounts)
                .unwrap_err()
                .refusal
        );
        assert!(
            !validate(&request("alice", "bob", "-1"), &accounts)
                .unwrap_err()
                .refusal
        );
    }

    #[test]
    fn csv_quotes_line_ends_and_field_counts() {
        let text = "From,To,Amount,Idempotency_Key\r\n\"alice\",bob,\"1000.00\",\"a,\"\"b\"\"\"\r\n\r\n  \r\nalice,bob,2,\r\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].amount.to_string(), "1000.00");
        assert_eq!(rows[0].idempotency_key.as_deref(), Some("a,\"b\""));
        assert_eq!(rows[1].idempotency_key, None);

        let text = "from,to,amount\nalice,bob,\"1,000.00\"\nalice,bob,1,extra\nalice,bob\n\"al\nice\",bob,1\nalice,bob,1e3\nalice,bob,3\n";
        let err = format!("{:#}", parse_csv(text).unwrap_err());
        for wanted in [
            "4 of 6 rows cannot be read",
            "row 1 (line 2): invalid amount: \"1,000.00\" is not a decimal number",
            "row 2 (line 3): 4 fields, the header has 3",
            "row 3 (line 4): 2 fields, the header has 3",
            "row 5 (line 7): invalid amount: \"1e3\" is in scientific notation",
        ] {
            assert!(err.contains(wanted), "{wanted:?} in {err}");
        }
        assert!(!err.contains("row 4") && !err.contains("row 6"), "{err}");
        assert!(
            format!("{:#}", parse_csv("from,to,amount,memo\n").unwrap_err())
                .contains("unknown CSV column \"memo\"")
        );
        assert!(parse_csv("from,sender_id,to,amount\n").is_err());
        assert!(parse_csv("").unwrap().is_empty());
    }

    #[test]
    fn jsonl_refuses_unknown_fields_and_exponents_listing_every_row() {
        let text = "{\"from\":\"a\",\"to\":\"b\",\"amount\":\"1\",\"idempotency_kye\":\"k\"}\n\n{\"from\":\"a\",\"to\":\"b\",\"amount\":1}\n{\"from\":\"a\",\"to\":\"b\",\"amount\":1e3}\n";
        let err = format!("{:#}", parse_jsonl(text).unwrap_err());
        assert!(err.contains("2 of 3 rows cannot be read"), "{err}");
        assert!(
            err.contains("row 1 (line 1): unknown field `idempotency_kye`"),
            "{err}"
        );
        assert!(
            err.contains("row 3 (line 4)") && err.contains("scientific notation"),
            "{err}"
        );
    }
}

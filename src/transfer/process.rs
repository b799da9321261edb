//! `payctl transfer process`: the worker that applies transfers.
//!
//! For each message on `money_transfers`, one Lua script does, atomically:
//! the version check (seed 001), the funds and currency checks, the debit
//! and the credit, version + 1 and the new status. Then one outcome event
//! per party goes to `payment_transactions` in seed 000's shape.
//!
//! Redelivery: a message whose version is one below the stored version, on
//! a transfer already completed or rejected, is a duplicate. It changes
//! nothing and announces the stored outcome again (same `event_id`s), so an
//! outcome lost in a crash is still delivered.

use std::collections::HashMap;
use std::sync::LazyLock;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Topics};
use crate::events::TransactionEvent;
use crate::money::{Currency, Money};
use crate::output::Output;
use crate::store::{keys, run_pipeline, Redis, Script};
use crate::transfer::{Transfer, TransferStatus};
use crate::worker::{self, BatchHandler, Delivery, Verdict, WorkerArgs, WorkerSpec, DEAD_LETTERED};

/// Apply transfers from the transfers topic (a long-running worker).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transfer process                         # until SIGINT/SIGTERM
  payctl transfer process --until-idle 5          # a batch job: stop after 5 s without input
  payctl transfer process --max-messages 1000 --output json
  payctl transfer process --no-ledger             # seed 001 exactly: version check, no balances")]
pub struct Args {
    /// Consumer group; run more workers with the same group to scale out.
    #[arg(
        long,
        env = "PAYCTL_TRANSFER_GROUP",
        default_value = "payctl-transfer-process"
    )]
    pub group: String,
    /// Only the version check and completion, as seed 001 does; no balances move.
    #[arg(long)]
    pub no_ledger: bool,
    #[command(flatten)]
    pub limits: WorkerArgs,
}

/// Outcome labels in the summary.
pub const COMPLETED: &str = "completed";
pub const REJECTED: &str = "rejected";
pub const CONFLICT: &str = "conflict";
pub const DUPLICATE: &str = "duplicate";

static PROCESS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: transfer record, sender account, receiver account
-- ARGV: 1 message version, 2 mode (ledger | status-only | reject),
--       3 amount in minor units, 4 transfer currency,
--       5 completed record JSON (no reason field), 6 reason (mode reject),
--       7 the largest balance (minor units; below 2^53, so Lua's doubles are exact)
local version = tonumber(ARGV[1])
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, current = pcall(cjson.decode, stored)
  if not ok or type(current) ~= 'table' then return {'corrupt', 'stored record is not JSON'} end
  local stored_version = tonumber(current.version)
  local done = current.status == 'completed' or current.status == 'rejected'
  if done and stored_version == version + 1 then
    local reason = ''
    if type(current.reason) == 'string' then reason = current.reason end
    return {'duplicate', current.status, reason}
  end
  if stored_version ~= version then
    return {'conflict', 'stored version ' .. tostring(current.version) .. ', message version ' .. ARGV[1]}
  end
  if current.status ~= 'initiated' then
    return {'conflict', 'transfer is already ' .. tostring(current.status)}
  end
elseif ARGV[2] ~= 'status-only' then
  return {'missing', 'no record ' .. KEYS[1]}
end
local reason = nil
if ARGV[2] == 'reject' then
  reason = ARGV[6]
elseif ARGV[2] == 'ledger' then
  -- Every check before any write: a script that fails halfway would keep
  -- its debit and be retried.
  local sender = redis.call('HMGET', KEYS[2], 'currency', 'balance')
  local receiver = redis.call('HMGET', KEYS[3], 'currency', 'balance')
  local amount = tonumber(ARGV[3])
  local sender_balance = tonumber(sender[2])
  local receiver_balance = tonumber(receiver[2])
  if not sender[1] or not receiver[1] or not sender_balance or not receiver_balance then
    reason = 'unknown account'
  elseif sender[1] ~= ARGV[4] or receiver[1] ~= ARGV[4] then
    reason = 'currency mismatch'
  elseif sender_balance < amount then
    reason = 'insufficient funds'
  elseif receiver_balance + amount > tonumber(ARGV[7]) then
    reason = 'receiver balance limit'
  end
end
if reason then
  -- The rejected record is the completed one with another status and a reason.
  local rejected = string.gsub(ARGV[5], '"status":"completed"', '"status":"rejected"', 1)
  redis.call('SET', KEYS[1], string.sub(rejected, 1, -2) .. ',"reason":"' .. reason .. '"}')
  return {'rejected', reason}
end
if ARGV[2] == 'ledger' then
  redis.call('HINCRBY', KEYS[2], 'balance', '-' .. ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'balance', ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[5])
return {'completed', ''}
"#,
    )
});

/// Applies batches of transfer messages.
pub struct TransferProcessor {
    redis: Redis,
    ledger: bool,
    events_topic: String,
    /// Account currencies never change, so each is looked up once.
    currencies: HashMap<String, Currency>,
}

/// What the script is asked to do with one message.
struct Planned {
    transfer: Transfer,
    currency: Option<Currency>,
    amount_minor: i64,
    reject: Option<&'static str>,
}

impl TransferProcessor {
    /// A processor writing to `redis`, announcing outcomes on `events_topic`.
    pub fn new(redis: Redis, ledger: bool, events_topic: String) -> TransferProcessor {
        TransferProcessor {
            redis,
            ledger,
            events_topic,
            currencies: HashMap::new(),
        }
    }

    /// Looks up, in one round trip, the currency of every sender not yet known.
    async fn learn_currencies(&mut self, senders: Vec<&str>) -> anyhow::Result<()> {
        let unknown: Vec<&str> = senders
            .into_iter()
            .filter(|id| !self.currencies.contains_key(*id))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in &unknown {
            pipe.hget(keys::account(id), "currency");
        }
        let found: Vec<Option<String>> = pipe
            .query_async(&mut self.redis)
            .await
            .context("reading account currencies")?;
        for (id, code) in unknown.into_iter().zip(found) {
            if let Some(currency) = code.and_then(|c| Currency::parse(&c).ok()) {
                self.currencies.insert(id.to_string(), currency);
            }
        }
        Ok(())
    }

    /// Parses and checks one message; `Err` is the dead-letter reason.
    fn plan(&self, transfer: Transfer) -> Result<Planned, String> {
        let currency = match &transfer.currency {
            Some(code) => Some(Currency::parse(code).map_err(|e| e.to_string())?),
            None => self.currencies.get(&transfer.sender_id).copied(),
        };
        let (amount_minor, reject) = match currency {
            Some(currency) => {
                let amount = Money::amount(transfer.amount, currency)
                    .map_err(|e| format!("invalid amount: {e}"))?;
                (amount.minor_units(), None)
            }
            // No currency and no such sender: rejected, under the version check.
            None if self.ledger => (0, Some("unknown account")),
            // Seed 001 mode, no currency to check places against: still a positive number.
            None if transfer.amount.is_negative() || transfer.amount.is_zero() => {
                return Err(format!(
                    "invalid amount: must be greater than zero, got {}",
                    transfer.amount
                ));
            }
            None => (0, None),
        };
        Ok(Planned {
            transfer,
            currency,
            amount_minor,
            reject,
        })
    }

    fn script_call(&self, planned: &Planned) -> anyhow::Result<redis::Cmd> {
        let t = &planned.transfer;
        let completed = Transfer {
            status: TransferStatus::Completed,
            version: t.version + 1,
            currency: planned
                .currency
                .map(|c| c.code().to_string())
                .or(t.currency.clone()),
            updated_at: Some(crate::clock::now_rfc3339()),
            reason: None,
            ..t.clone()
        };
        let completed = serde_json::to_string(&completed)?;
        let mode = match (planned.reject, self.ledger) {
            (Some(_), _) => "reject",
            (None, true) => "ledger",
            (None, false) => "status-only",
        };
        let transfer_key = keys::transfer(&t.transfer_id);
        let sender_key = keys::account(&t.sender_id);
        let receiver_key = keys::account(&t.receiver_id);
        let mut cmd = PROCESS.call(&[&transfer_key, &sender_key, &receiver_key]);
        cmd.arg(t.version)
            .arg(mode)
            .arg(planned.amount_minor)
            .arg(planned.currency.map(|c| c.code()).unwrap_or(""))
            .arg(completed)
            .arg(planned.reject.unwrap_or(""))
            .arg(crate::money::MAX_MINOR_UNITS);
        Ok(cmd)
    }

    /// The outcome events of a processed transfer, one per party.
    fn announce(
        &self,
        planned: &Planned,
        status: &str,
        reason: Option<&str>,
    ) -> Vec<crate::kafka::Outgoing> {
        let t = &planned.transfer;
        let occurred_at = crate::clock::now_rfc3339();
        let currency = planned
            .currency
            .map(|c| c.code().to_string())
            .or(t.currency.clone());
        [
            ("debit", &t.sender_id, &t.receiver_id),
            ("credit", &t.receiver_id, &t.sender_id),
        ]
        .into_iter()
        .map(|(role, user, counterparty)| TransactionEvent {
            transaction_id: t.transfer_id.clone(),
            user_id: user.clone(),
            status: status.to_string(),
            event_id: Some(format!("{}:{}:{role}", t.transfer_id, t.version)),
            role: Some(role.into()),
            counterparty: Some(counterparty.clone()),
            amount: Some(t.amount),
            currency: currency.clone(),
            reason: reason.map(String::from),
            occurred_at: Some(occurred_at.clone()),
            ..TransactionEvent::default()
        })
        .map(|event| event.to_outgoing(&self.events_topic))
        .collect()
    }
}

/// Reads a message as a transfer; `Err` is the dead-letter reason.
fn parse_message(payload: &[u8]) -> Result<Transfer, String> {
    let transfer: Transfer =
        serde_json::from_slice(payload).map_err(|e| format!("not a transfer message: {e}"))?;
    if transfer.transfer_id.trim().is_empty() {
        return Err("transfer_id is empty".into());
    }
    if transfer.sender_id == transfer.receiver_id {
        return Err("sender and receiver are the same account".into());
    }
    Ok(transfer)
}

impl BatchHandler for TransferProcessor {
    async fn prepare(&mut self) -> anyhow::Result<()> {
        PROCESS.load(&mut self.redis).await?;
        Ok(())
    }

    async fn apply(&mut self, batch: &[Delivery]) -> anyhow::Result<Vec<Verdict>> {
        let parsed: Vec<Result<Transfer, String>> =
            batch.iter().map(|d| parse_message(&d.payload)).collect();
        let senders: Vec<&str> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|t| t.currency.is_none())
            .map(|t| t.sender_id.as_str())
            .collect();
        self.learn_currencies(senders).await?;
        let plans: Vec<Result<Planned, String>> = parsed
            .into_iter()
            .map(|p| p.and_then(|t| self.plan(t)))
            .collect();

        let mut pipe = redis::pipe();
        for planned in plans.iter().flatten() {
            pipe.add_command(self.script_call(planned)?);
        }
        let replies: Vec<Vec<String>> = run_pipeline(&pipe, &mut self.redis)
            .await
            .context("applying transfers in Redis")?;

        let mut replies = replies.into_iter();
        let mut verdicts = Vec::with_capacity(batch.len());
        for (delivery, plan) in batch.iter().zip(&plans) {
            let planned = match plan {
                Ok(planned) => planned,
                Err(reason) => {
                    verdicts.push(Verdict::dead_letter(delivery, reason.clone()));
                    continue;
                }
            };
            let reply = replies
                .next()
                .context("Redis returned fewer replies than commands")?;
            let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or("");
            let id = &planned.transfer.transfer_id;
            let verdict = match field(0) {
                COMPLETED => Verdict::new(COMPLETED, self.announce(planned, COMPLETED, None)),
                REJECTED => {
                    tracing::info!(transfer = %id, reason = field(1), "transfer rejected");
                    Verdict::new(REJECTED, self.announce(planned, REJECTED, Some(field(1))))
                }
                DUPLICATE => {
                    tracing::info!(transfer = %id, "duplicate delivery; announcing the stored outcome again");
                    let reason = Some(field(2)).filter(|r| !r.is_empty());
                    Verdict::new(DUPLICATE, self.announce(planned, field(1), reason))
                }
                CONFLICT => {
                    tracing::warn!(transfer = %id, detail = field(1), "version conflict; not applied");
                    Verdict::new(CONFLICT, Vec::new())
                }
                other => Verdict::dead_letter(delivery, format!("{other}: {}", field(1))),
            };
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    redis: Redis,
    topics: &Topics,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = WorkerSpec {
        group: args.group,
        inputs: vec![topics.transfers.clone()],
        outputs: vec![topics.transactions.clone()],
        outcomes: &[COMPLETED, REJECTED, CONFLICT, DUPLICATE, DEAD_LETTERED],
        limits: args.limits.limits()?,
    };
    let mut processor = TransferProcessor::new(redis, !args.no_ledger, topics.transactions.clone());
    let summary = worker::run(kafka, &spec, &mut processor, shutdown).await?;
    output.emit(&summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seed_001_messages() {
        let seed = br#"{"transfer_id": "5b0c", "sender_id": "a", "receiver_id": "b", "amount": 100.5, "status": "initiated", "version": 1}"#;
        let transfer = parse_message(seed).unwrap();
        assert_eq!(transfer.amount.to_string(), "100.5");
        assert_eq!(transfer.version, 1);
        assert!(parse_message(b"{not json")
            .unwrap_err()
            .starts_with("not a transfer message"));
        assert!(parse_message(br#"{"transfer_id":"x","sender_id":"a","receiver_id":"b","status":"initiated","version":1}"#)
            .unwrap_err()
            .contains("missing field `amount`"));
    }
}

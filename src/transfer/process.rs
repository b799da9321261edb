//! `payctl transfer process`: the worker that applies transfers.
//!
//! For each message on `money_transfers`, the Lua script does, atomically:
//! the version check (as the versioned transfer service does), the funds and currency checks, the debit
//! and the credit, version + 1 and the new status. One script call applies
//! a whole batch, transfer after transfer (a script call costs Redis about
//! 12 µs before it does any work: once per batch, not once per transfer). Then one outcome event
//! per party goes to `payment_transactions` in the notification service's shape.
//!
//! Redelivery: a message whose version is one below the stored version, on
//! a transfer already completed or rejected, is a duplicate. It changes
//! nothing and announces the stored outcome again (same `event_id`s), so an
//! outcome lost in a crash is still delivered.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Topics};
use crate::events::TransactionEvent;
use crate::money::{Currency, Money};
use crate::output::Output;
use crate::store::{keys, Redis, Script};
use crate::transfer::{Transfer, TransferStatus};
use crate::worker::{self, BatchHandler, Delivery, Verdict, WorkerArgs, WorkerSpec, DEAD_LETTERED};

/// Apply transfers from the transfers topic (a long-running worker).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transfer process                         # until SIGINT/SIGTERM
  payctl transfer process --until-idle 5          # a batch job: stop after 5 s without input
  payctl transfer process --max-messages 1000 --output json
  payctl transfer process --no-ledger             # version check only, no balances (as the versioned transfer service)")]
pub struct Args {
    /// Consumer group; run more workers with the same group to scale out.
    #[arg(
        long,
        env = "PAYCTL_TRANSFER_GROUP",
        default_value = "payctl-transfer-process"
    )]
    pub group: String,
    /// Only the version check and completion, as the versioned transfer service does; no balances move.
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

/// The dead-letter reason of a message that disagrees with the stored record.
pub const MISMATCH: &str = "does not match the stored transfer";

static PROCESS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("process.lua")));
static ANNOUNCED: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("announced.lua")));

/// How many times a batch's plans are made again when records change
/// between the read and the script (another worker on the same transfer).
const MAX_REPLANS: usize = 5;

/// Applies batches of transfer messages.
pub struct TransferProcessor {
    redis: Redis,
    ledger: bool,
    events_topic: String,
    /// Account currencies never change, so each is looked up once.
    currencies: HashMap<String, Currency>,
}

/// What became of one message before any script runs.
enum Plan {
    /// Dead-letter it with this reason.
    Dead(String),
    /// Changes nothing and announces nothing.
    Conflict(String),
    /// Already decided: announce the stored outcome again.
    Duplicate(Transfer),
    /// Run the script.
    Apply(Planned),
}

/// What the script is asked to do with one message.
struct Planned {
    /// The record as read (`None`: there was none, --no-ledger mode only).
    read: Option<String>,
    /// The transfer as stored (or, with no record, as the message says).
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
        let lookups = unknown
            .iter()
            .map(|id| {
                let mut command = redis::cmd("HGET");
                command.arg(keys::account(id)).arg("currency");
                command
            })
            .collect();
        let found: Vec<redis::RedisResult<Option<String>>> =
            crate::store::query_each(&mut self.redis, lookups)
                .await
                .context("reading account currencies")?;
        for (id, code) in unknown.into_iter().zip(found) {
            let code = code.with_context(|| format!("reading the currency of {id}"))?;
            if let Some(currency) = code.and_then(|c| Currency::parse(&c).ok()) {
                self.currencies.insert(id.to_string(), currency);
            }
        }
        Ok(())
    }

    /// Reads the stored records of `messages` in one round trip.
    /// Reads, in one round trip, the stored records of `messages` and how
    /// far each of their partitions' outcomes are known to be acknowledged.
    async fn read_records(
        &mut self,
        batch: &[Delivery],
        messages: &[(usize, &Transfer)],
    ) -> anyhow::Result<(Vec<Option<String>>, Announced)> {
        if messages.is_empty() {
            return Ok((Vec::new(), Announced::default()));
        }
        let keys: Vec<String> = messages
            .iter()
            .map(|(_, t)| keys::transfer(&t.transfer_id))
            .collect();
        let fields: Vec<String> = messages
            .iter()
            .map(|(i, _)| partition_field(&batch[*i]))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (records, marks): (Vec<Option<String>>, Vec<Option<String>>) =
            if self.redis.is_cluster() {
                // Records of many slots: one GET each, many in flight.
                let gets = keys
                    .iter()
                    .map(|key| {
                        let mut command = redis::cmd("GET");
                        command.arg(key);
                        command
                    })
                    .collect();
                let records: Vec<redis::RedisResult<Option<String>>> =
                    crate::store::query_each(&mut self.redis, gets)
                        .await
                        .context("reading transfer records")?;
                let records = records
                    .into_iter()
                    .collect::<redis::RedisResult<_>>()
                    .context("reading transfer records")?;
                let marks = redis::cmd("HMGET")
                    .arg(keys::TRANSFERS_ANNOUNCED)
                    .arg(&fields)
                    .query_async(&mut self.redis)
                    .await
                    .context("reading announced transfers")?;
                (records, marks)
            } else {
                let mut pipe = redis::pipe();
                pipe.cmd("MGET").arg(&keys);
                pipe.cmd("HMGET")
                    .arg(keys::TRANSFERS_ANNOUNCED)
                    .arg(&fields);
                pipe.query_async(&mut self.redis)
                    .await
                    .context("reading transfer records")?
            };
        let announced = fields
            .into_iter()
            .zip(marks)
            .filter_map(|(field, mark)| Some((field, parse_mark(&mark?)?)))
            .collect();
        Ok((records, Announced(announced)))
    }

    /// Decides what to do with one message, given the record as read.
    fn plan(&self, message: &Transfer, read: Option<(String, Result<Transfer, String>)>) -> Plan {
        let Some((raw, parsed)) = read else {
            if self.ledger {
                return Plan::Dead(format!(
                    "no stored transfer {}: only transfers initiated in Redis are applied",
                    keys::transfer(&message.transfer_id)
                ));
            }
            // --no-ledger mode: the versioned transfer service applies a message with no record; no money moves.
            return self.apply_plan(None, message.clone());
        };
        let stored = match parsed {
            Ok(stored) => stored,
            Err(e) => return Plan::Dead(e),
        };
        let stored_currency = match self.currency_of(&stored) {
            Ok(c) => c,
            Err(e) => return Plan::Dead(e),
        };
        if let Some(difference) = difference(message, &stored, stored_currency) {
            return Plan::Dead(format!("{MISMATCH} ({difference}); stored record: {raw}"));
        }
        let decided = matches!(
            stored.status,
            TransferStatus::Completed | TransferStatus::Rejected
        );
        if decided && Some(stored.version) == message.version.checked_add(1) {
            return Plan::Duplicate(stored);
        }
        if stored.version != message.version {
            return Plan::Conflict(format!(
                "stored version {}, message version {}",
                stored.version, message.version
            ));
        }
        if stored.status != TransferStatus::Initiated {
            return Plan::Conflict(format!("transfer is already {}", stored.status.as_str()));
        }
        self.apply_plan(Some(raw), stored)
    }

    /// The currency a stored record is in: its own, or its sender's.
    fn currency_of(&self, stored: &Transfer) -> Result<Option<Currency>, String> {
        match &stored.currency {
            Some(code) => Currency::parse(code)
                .map(Some)
                .map_err(|e| format!("stored transfer has {e}")),
            None => Ok(self.currencies.get(&stored.sender_id).copied()),
        }
    }

    fn apply_plan(&self, read: Option<String>, transfer: Transfer) -> Plan {
        let currency = match self.currency_of(&transfer) {
            Ok(c) => c,
            Err(e) => return Plan::Dead(e),
        };
        let (amount_minor, reject) = match currency {
            Some(currency) => match Money::amount(transfer.amount, currency) {
                Ok(amount) => (amount.minor_units(), None),
                Err(e) => return Plan::Dead(format!("invalid amount: {e}")),
            },
            // No currency and no such sender: rejected, under the version check.
            None if self.ledger => (0, Some("unknown account")),
            // --no-ledger mode, no currency to check places against: still a positive number.
            None if transfer.amount.is_negative() || transfer.amount.is_zero() => {
                return Plan::Dead(format!(
                    "invalid amount: must be greater than zero, got {}",
                    transfer.amount
                ));
            }
            None => (0, None),
        };
        if transfer.version >= MAX_VERSION {
            return Plan::Dead(format!(
                "version {} is out of range (at most {MAX_VERSION})",
                transfer.version
            ));
        }
        Plan::Apply(Planned {
            read,
            transfer,
            currency,
            amount_minor,
            reject,
        })
    }

    /// On a Redis Cluster: each planned transfer in order, step by step
    /// within one slot at a time (see [`super::saga`]); the replies in the
    /// shape of [`Self::batch_call`]'s.
    async fn apply_across_slots(
        &mut self,
        applying: &[&Planned],
        now: &str,
    ) -> anyhow::Result<Vec<String>> {
        let mut replies = Vec::with_capacity(2 * applying.len());
        for planned in applying {
            let t = &planned.transfer;
            let completed = serde_json::to_vec(&self.completed(planned, now))?;
            let step = super::saga::Step {
                id: &t.transfer_id,
                sender: &t.sender_id,
                receiver: &t.receiver_id,
                read: planned.read.as_deref(),
                mode: self.mode(planned),
                amount_minor: planned.amount_minor,
                currency: planned.currency.map(|c| c.code()).unwrap_or(""),
                completed: &completed,
                reason: planned.reject.unwrap_or(""),
                ledger: self.ledger,
            };
            let (outcome, detail) = super::saga::apply(&mut self.redis, &step).await?;
            replies.push(outcome);
            replies.push(detail);
        }
        Ok(replies)
    }

    /// The record of `planned` once completed.
    fn completed(&self, planned: &Planned, now: &str) -> Transfer {
        let t = &planned.transfer;
        Transfer {
            status: TransferStatus::Completed,
            version: t.version + 1,
            currency: planned
                .currency
                .map(|c| c.code().to_string())
                .or(t.currency.clone()),
            updated_at: Some(now.to_string()),
            reason: None,
            ..t.clone()
        }
    }

    /// What the script does with `planned`.
    fn mode(&self, planned: &Planned) -> &'static str {
        match (planned.reject, self.ledger) {
            (Some(_), _) => "reject",
            (None, true) => "ledger",
            (None, false) => "status-only",
        }
    }

    /// One script call that applies every planned transfer in order
    /// (see process.lua); `now` is their `updated_at`.
    fn batch_call(&self, applying: &[&Planned], now: &str) -> anyhow::Result<redis::Cmd> {
        let mut keys = Vec::with_capacity(1 + 3 * applying.len());
        keys.push(keys::PENDING_TRANSFERS.to_string());
        for planned in applying {
            let t = &planned.transfer;
            keys.push(keys::transfer(&t.transfer_id));
            keys.push(keys::account(&t.sender_id));
            keys.push(keys::account(&t.receiver_id));
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut cmd = PROCESS.call(&keys);
        cmd.arg(crate::money::MAX_MINOR_UNITS);
        for planned in applying {
            let t = &planned.transfer;
            let completed = self.completed(planned, now);
            let mode = self.mode(planned);
            cmd.arg(planned.read.as_deref().unwrap_or(""))
                .arg(mode)
                .arg(planned.amount_minor)
                .arg(planned.currency.map(|c| c.code()).unwrap_or(""))
                .arg(serde_json::to_vec(&completed)?)
                .arg(planned.reject.unwrap_or(""))
                .arg(&t.transfer_id)
                .arg(&t.sender_id)
                .arg(&t.receiver_id);
        }
        Ok(cmd)
    }

    /// The outcome events of a decided transfer, one per party, built from
    /// the stored record (`t`), never from the message.
    ///
    /// `version` is the one the outcome was decided at (the message's), so
    /// an announcement repeated later carries the same `event_id`s.
    fn announce(
        &self,
        t: &Transfer,
        version: u64,
        status: &str,
        reason: Option<&str>,
        reannounced: bool,
        occurred_at: &str,
    ) -> Vec<crate::kafka::Outgoing> {
        let currency = t.currency.clone().or_else(|| {
            self.currencies
                .get(&t.sender_id)
                .map(|c| c.code().to_string())
        });
        [
            ("debit", &t.sender_id, &t.receiver_id),
            ("credit", &t.receiver_id, &t.sender_id),
        ]
        .into_iter()
        .map(|(role, user, counterparty)| TransactionEvent {
            transaction_id: t.transfer_id.clone(),
            user_id: user.clone(),
            status: status.to_string(),
            event_id: Some(format!("{}:{version}:{role}", t.transfer_id)),
            role: Some(role.into()),
            counterparty: Some(counterparty.clone()),
            amount: Some(t.amount),
            currency: currency.clone(),
            reason: reason.map(String::from),
            occurred_at: Some(occurred_at.to_string()),
            reannounced,
            ..TransactionEvent::default()
        })
        .map(|event| event.to_outgoing(&self.events_topic))
        .collect()
    }

    /// Plans `messages` against their records, runs the scripts, and turns
    /// each reply into a verdict. Messages whose record changed in between
    /// come back as `None`, to be planned again.
    async fn apply_once<'m>(
        &mut self,
        batch: &[Delivery],
        messages: &[(usize, &'m Transfer)],
        verdicts: &mut [Option<Verdict>],
    ) -> anyhow::Result<Vec<(usize, &'m Transfer)>> {
        let refs: Vec<&Transfer> = messages.iter().map(|(_, t)| *t).collect();
        let (records, announced) = self.read_records(batch, messages).await?;
        // Each stored record parsed once; records the versioned transfer service wrote carry no currency, so
        // their senders' currencies are looked up (once per account).
        let records: Vec<Option<(String, Result<Transfer, String>)>> = records
            .into_iter()
            .zip(&refs)
            .map(|(raw, message)| {
                raw.map(|raw| {
                    let parsed = parse_record(&raw, &message.transfer_id);
                    (raw, parsed)
                })
            })
            .collect();
        let senders: Vec<String> = records
            .iter()
            .flatten()
            .filter_map(|(_, parsed)| parsed.as_ref().ok())
            .chain(refs.iter().copied())
            .filter(|t| t.currency.is_none())
            .map(|t| t.sender_id.clone())
            .collect();
        self.learn_currencies(senders.iter().map(String::as_str).collect())
            .await?;

        let plans: Vec<Plan> = refs
            .iter()
            .zip(records)
            .map(|(message, read)| self.plan(message, read))
            .collect();
        if self.redis.is_cluster() {
            // A transfer decided on a cluster leaves the pending index in a
            // step of its own; a crash before it leaves the id there, and
            // the redelivery (a duplicate now) takes it out.
            let decided: Vec<&str> = plans
                .iter()
                .filter_map(|plan| match plan {
                    Plan::Duplicate(stored) => Some(stored.transfer_id.as_str()),
                    _ => None,
                })
                .collect();
            if !decided.is_empty() {
                let _: i64 = redis::cmd("ZREM")
                    .arg(keys::PENDING_TRANSFERS)
                    .arg(&decided)
                    .query_async(&mut self.redis)
                    .await
                    .context("updating the pending transfers")?;
            }
        }
        // One script call for the batch. Each transfer's reply stands
        // alone: an error caused by one transfer's data (WRONGTYPE on its
        // accounts) dead-letters that transfer only.
        let now = crate::clock::now_rfc3339();
        let applying: Vec<&Planned> = plans
            .iter()
            .filter_map(|plan| match plan {
                Plan::Apply(planned) => Some(planned),
                _ => None,
            })
            .collect();
        let replies: Vec<String> = if applying.is_empty() {
            Vec::new()
        } else if self.redis.is_cluster() {
            self.apply_across_slots(&applying, &now).await?
        } else {
            self.batch_call(&applying, &now)?
                .query_async(&mut self.redis)
                .await
                .context("applying transfers in Redis")?
        };
        anyhow::ensure!(
            replies.len() == 2 * applying.len(),
            "the transfer script answered {} values for {} transfers",
            replies.len(),
            applying.len()
        );
        let mut replies = replies.chunks_exact(2);
        let mut stale = Vec::new();
        for ((index, message), plan) in messages.iter().zip(plans) {
            let delivery = &batch[*index];
            let id = &message.transfer_id;
            let verdict = match plan {
                Plan::Dead(reason) => Verdict::dead_letter(delivery, reason),
                Plan::Conflict(detail) => {
                    tracing::warn!(transfer = %id, %detail, "version conflict; not applied");
                    Verdict::new(CONFLICT, Vec::new())
                }
                Plan::Duplicate(_) if announced.covers(delivery) => {
                    // Redelivered after its events were acknowledged (a
                    // worker that died before its offsets were committed).
                    tracing::info!(transfer = %id, "duplicate delivery, already announced");
                    Verdict::new(DUPLICATE, Vec::new())
                }
                Plan::Duplicate(stored) => {
                    tracing::info!(transfer = %id, "duplicate delivery; announcing the stored outcome again");
                    let status = stored.status.as_str();
                    Verdict::new(
                        DUPLICATE,
                        self.announce(
                            &stored,
                            message.version,
                            status,
                            stored.reason.as_deref(),
                            true,
                            &now,
                        ),
                    )
                }
                Plan::Apply(planned) => {
                    let reply = replies
                        .next()
                        .context("Redis returned fewer replies than transfers")?;
                    let (outcome, detail) = (reply[0].as_str(), reply[1].as_str());
                    match outcome {
                        COMPLETED => Verdict::new(
                            COMPLETED,
                            self.announce(
                                &planned.transfer,
                                message.version,
                                COMPLETED,
                                None,
                                false,
                                &now,
                            ),
                        ),
                        REJECTED => {
                            tracing::info!(transfer = %id, reason = detail, "transfer rejected");
                            Verdict::new(
                                REJECTED,
                                self.announce(
                                    &planned.transfer,
                                    message.version,
                                    REJECTED,
                                    Some(detail),
                                    false,
                                    &now,
                                ),
                            )
                        }
                        "stale" => {
                            stale.push((*index, *message));
                            continue;
                        }
                        "error" => Verdict::dead_letter(
                            delivery,
                            format!("applying the transfer failed: {detail}"),
                        ),
                        other => {
                            anyhow::bail!("unexpected reply from the transfer script: {other}")
                        }
                    }
                }
            };
            verdicts[*index] = Some(verdict);
        }
        Ok(stale)
    }
}

/// `topic/partition`, a field of [`keys::TRANSFERS_ANNOUNCED`].
fn partition_field(delivery: &Delivery) -> String {
    format!("{}/{}", delivery.topic, delivery.partition)
}

/// `offset:timestamp` as stored in [`keys::TRANSFERS_ANNOUNCED`].
fn parse_mark(text: &str) -> Option<(i64, i64)> {
    let (offset, timestamp) = text.split_once(':')?;
    Some((offset.parse().ok()?, timestamp.parse().ok()?))
}

/// Per input partition, the highest offset whose outcome events are all
/// acknowledged, and the newest timestamp of any message up to it.
#[derive(Default)]
struct Announced(HashMap<String, (i64, i64)>);

impl Announced {
    /// True when `delivery` was in a batch whose events were acknowledged.
    /// A message newer than that batch at a lower offset means the broker
    /// lost its log; it is announced again, to be safe.
    fn covers(&self, delivery: &Delivery) -> bool {
        self.0
            .get(&partition_field(delivery))
            .is_some_and(|&(offset, newest)| {
                delivery.offset <= offset && delivery.timestamp_ms.is_none_or(|ts| ts <= newest)
            })
    }
}

/// The highest version a message may carry: versions stay exact in Lua and
/// JSON readers that use doubles.
const MAX_VERSION: u64 = 1 << 53;

/// Reads a stored record strictly; `Err` is the dead-letter reason.
fn parse_record(raw: &str, id: &str) -> Result<Transfer, String> {
    let stored: Transfer = serde_json::from_str(raw).map_err(|e| {
        format!(
            "stored {} is not a transfer payctl can read: {e}",
            keys::transfer(id)
        )
    })?;
    if stored.transfer_id != id {
        return Err(format!(
            "stored {} names another transfer ({:?})",
            keys::transfer(id),
            stored.transfer_id
        ));
    }
    check_parties(&stored).map_err(|e| format!("stored {}: {e}", keys::transfer(id)))?;
    Ok(stored)
}

/// How a message differs from the stored record, if it does. Amounts are
/// compared by value (`25.5` equals `"25.50"`); a message without a
/// currency agrees with any.
fn difference(message: &Transfer, stored: &Transfer, currency: Option<Currency>) -> Option<String> {
    if message.sender_id != stored.sender_id {
        return Some(format!(
            "sender_id: stored {:?}, message {:?}",
            stored.sender_id, message.sender_id
        ));
    }
    if message.receiver_id != stored.receiver_id {
        return Some(format!(
            "receiver_id: stored {:?}, message {:?}",
            stored.receiver_id, message.receiver_id
        ));
    }
    if message.amount.normalized() != stored.amount.normalized() {
        return Some(format!(
            "amount: stored {}, message {}",
            stored.amount, message.amount
        ));
    }
    if let Some(code) = &message.currency {
        let same = match (Currency::parse(code), currency) {
            (Ok(theirs), Some(ours)) => theirs == ours,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        };
        if !same {
            let stored_code = currency.map(|c| c.code()).unwrap_or("unknown");
            return Some(format!("currency: stored {stored_code}, message {code:?}"));
        }
    }
    None
}

/// The ids a transfer names must be usable as key parts.
fn check_parties(transfer: &Transfer) -> Result<(), String> {
    for id in [&transfer.sender_id, &transfer.receiver_id] {
        crate::accounts::validate_id(id).map_err(|e| e.to_string())?;
    }
    if transfer.sender_id == transfer.receiver_id {
        return Err("sender and receiver are the same account".into());
    }
    Ok(())
}

/// Reads a message as a transfer; `Err` is the dead-letter reason.
fn parse_message(payload: &[u8]) -> Result<Transfer, String> {
    let transfer: Transfer =
        serde_json::from_slice(payload).map_err(|e| format!("not a transfer message: {e}"))?;
    crate::store::check_id("transfer_id", &transfer.transfer_id)?;
    check_parties(&transfer)?;
    if transfer.version >= MAX_VERSION {
        return Err(format!(
            "version {} is out of range (at most {MAX_VERSION})",
            transfer.version
        ));
    }
    Ok(transfer)
}

impl BatchHandler for TransferProcessor {
    /// The message read as a transfer, or why it cannot be.
    type Decoded = Result<Transfer, String>;

    fn decoder(&self) -> worker::Decoder<Self::Decoded> {
        std::sync::Arc::new(|batch| batch.iter().map(|d| parse_message(&d.payload)).collect())
    }

    async fn prepare(&mut self) -> anyhow::Result<()> {
        // On a cluster the saga's scripts load where they run (see
        // `Script::load`); this does nothing there.
        PROCESS.load(&mut self.redis).await?;
        ANNOUNCED.load(&mut self.redis).await?;
        Ok(())
    }

    /// Notes, per partition, that the batch's events are acknowledged, so a
    /// redelivery after a crash need not announce them again (one `HSET`
    /// per batch; not noting it only means announcing again).
    async fn acknowledged(&mut self, batch: &[Delivery]) -> anyhow::Result<()> {
        let mut marks: HashMap<String, (i64, i64)> = HashMap::new();
        for delivery in batch {
            let mark = marks.entry(partition_field(delivery)).or_insert((-1, -1));
            mark.0 = mark.0.max(delivery.offset);
            mark.1 = mark.1.max(delivery.timestamp_ms.unwrap_or(-1));
        }
        let mut call = ANNOUNCED.invocation();
        call.key(keys::TRANSFERS_ANNOUNCED);
        for (field, (offset, ts)) in marks {
            call.arg(field).arg(offset).arg(ts);
        }
        let _: i64 = call
            .invoke_async(&mut self.redis)
            .await
            .context("noting announced transfers")?;
        Ok(())
    }

    async fn apply(
        &mut self,
        batch: &[Delivery],
        decoded: &[Self::Decoded],
    ) -> anyhow::Result<Vec<Verdict>> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; batch.len()];
        let mut messages = Vec::with_capacity(batch.len());
        for (index, (delivery, message)) in batch.iter().zip(decoded).enumerate() {
            match message {
                Ok(message) => messages.push((index, message)),
                Err(reason) => {
                    verdicts[index] = Some(Verdict::dead_letter(delivery, reason.clone()))
                }
            }
        }
        // A record that changed between the read and the script (the same
        // transfer twice in one batch, another worker) is read and planned again.
        for _ in 0..MAX_REPLANS {
            if messages.is_empty() {
                break;
            }
            messages = self.apply_once(batch, &messages, &mut verdicts).await?;
        }
        for (index, message) in messages {
            verdicts[index] = Some(Verdict::dead_letter(
                &batch[index],
                format!(
                    "{} kept changing while it was applied",
                    keys::transfer(&message.transfer_id)
                ),
            ));
        }
        Ok(verdicts
            .into_iter()
            .map(|v| v.expect("every message has a verdict"))
            .collect())
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
        redis: Some(redis.clone()),
    };
    let mut processor = TransferProcessor::new(redis, !args.no_ledger, topics.transactions.clone());
    let summary = worker::run(kafka, &spec, &mut processor, shutdown).await?;
    output.emit(&summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_versioned_transfer_services_messages() {
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

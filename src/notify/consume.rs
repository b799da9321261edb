//! `payctl notify consume`: the notification worker (the notification service, the banking app).
//!
//! A transaction event becomes one notification for its user; a rate change
//! one for each user watching the pair. Each notifies exactly once, with no
//! key kept per event: `notify:applied` holds each input partition's
//! highest applied offset, written in the same script call as the pushes,
//! so a redelivered message, read again by any group, pushes nothing. Every
//! event is also looked for among the user's last `--dedup-window`
//! notifications (by its `event_id`, or its text when it has none): an
//! outcome announced twice (`reannounced`, or a late first announcement)
//! notifies once, whichever copy comes first. See `notify.lua`.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use anyhow::Context as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Topics};
use crate::events::RateChangeEvent;
use crate::output::Output;
use crate::payments;
use crate::store::{keys, Redis, Script};
use crate::worker::{self, BatchHandler, Delivery, Verdict, WorkerArgs, WorkerSpec, DEAD_LETTERED};

/// Turn transaction events and rate changes into notifications (a worker).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl notify consume                     # until SIGINT/SIGTERM
  payctl notify consume --until-idle 5 --output json
  payctl notify consume --group replay-1 --replay --until-idle 5   # notify again, on purpose")]
pub struct Args {
    /// Consumer group.
    #[arg(long, env = "PAYCTL_NOTIFY_GROUP", default_value = "payctl-notify")]
    pub group: String,
    /// How many of a user's latest notifications are searched for an earlier
    /// copy of an event that may have been announced before. Only such
    /// events (re-announced after a crash, or without an event id) pay for
    /// the search. An earlier copy further back than this is not found, and
    /// the event is notified twice: a busy user can receive hundreds of
    /// notifications while a crashed worker restarts and a lagging notifier
    /// catches up (the fault suite saw 111 between two copies at 100,000
    /// transfers over 1,000 accounts).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub dedup_window: u32,
    /// Push even what was applied before (a deliberate replay, e.g. with a
    /// new --group from the start of the topic).
    #[arg(long)]
    pub replay: bool,
    #[command(flatten)]
    pub limits: WorkerArgs,
}

const NOTIFIED: &str = "notified";
const DUPLICATE: &str = "duplicate";
const NO_WATCHERS: &str = "no-watchers";

static NOTIFY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("notify.lua")));

/// One notification to push.
#[derive(Debug)]
struct Push {
    user_key: String,
    json: String,
    /// Text that marks an earlier copy in the user's list, when this event
    /// may have been announced before.
    mark: Option<String>,
    /// A first announcement (an event id, not flagged `reannounced`): a
    /// deliberate `--replay` pushes it again without looking for it.
    first: bool,
    /// A subscription payment to mark `completed` once this is written.
    payment_id: Option<String>,
}

/// What one message asks for.
enum Plan {
    Dead(String),
    Transaction(Push),
    RateChange(RateChangeEvent),
}

/// The user id as a key part: the notification service accepts strings and numbers.
fn user_key(user: &Value) -> Result<String, String> {
    let key = match user {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(format!(
                "user_id must be a non-empty string or a number, got {other}"
            ))
        }
    };
    super::validate_user(&key).map_err(|e| e.to_string())?;
    Ok(key)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Longest transaction id or status put into a notification.
const MAX_FIELD: usize = 256;

/// The JSON text of `"name":value`, as serde writes it into a notification.
fn json_field(name: &str, value: &str) -> String {
    format!(
        "\"{name}\":{}",
        serde_json::to_string(value).expect("a string serializes")
    )
}

/// The fields of a transaction event a notification is made of; the rest
/// (amount, counterparty, …) is skipped unread. A field given twice is
/// refused rather than guessed at.
#[derive(serde::Deserialize)]
struct TransactionFields {
    transaction_id: Option<Value>,
    user_id: Option<Value>,
    status: Option<Value>,
    event_id: Option<Value>,
    reannounced: Option<Value>,
    payment_id: Option<Value>,
}

/// The notification service: `{transaction_id, user_id, status}` → "Transaction {id} is {status}".
/// `now` is the notification's `created_at`.
fn plan_transaction(payload: &[u8], now: &str) -> Result<Push, String> {
    let event: TransactionFields =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    fn field<'a>(value: &'a Option<Value>, name: &str) -> Result<&'a Value, String> {
        value
            .as_ref()
            .ok_or_else(|| format!("missing field {name:?}"))
    }
    let transaction_id = scalar_text(field(&event.transaction_id, "transaction_id")?)
        .ok_or("transaction_id must be a string or number")?;
    let user_id = field(&event.user_id, "user_id")?;
    let status = field(&event.status, "status")?
        .as_str()
        .ok_or("status must be a string")?;
    for (name, value) in [
        ("transaction_id", transaction_id.as_str()),
        ("status", status),
    ] {
        if value.is_empty() || value.len() > MAX_FIELD || value.chars().any(char::is_control) {
            return Err(format!(
                "{name} must be 1 to {MAX_FIELD} bytes without control characters"
            ));
        }
    }
    let user = user_key(user_id)?;
    let event_id = match &event.event_id {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_FIELD => Some(id.as_str()),
        Some(_) => {
            return Err(format!(
                "event_id must be a string of 1 to {MAX_FIELD} bytes"
            ))
        }
    };
    let message = format!("Transaction {transaction_id} is {status}");
    // Any copy may come second: a first announcement too, published late
    // by a worker that lost its partitions after another one announced
    // the outcome again (seen on a cluster, where a batch takes longer).
    let mark = match event_id {
        Some(id) => Some(json_field("event_id", id)),
        None => Some(json_field("message", &message)),
    };
    let reannounced = event.reannounced.as_ref().and_then(Value::as_bool) == Some(true);
    let json = notification_json(user_id, &message, "transaction", event_id, now);
    Ok(Push {
        user_key: keys::notifications(&user),
        json,
        mark,
        first: event_id.is_some() && !reannounced,
        payment_id: event
            .payment_id
            .as_ref()
            .and_then(Value::as_str)
            .map(String::from),
    })
}

/// A new notification's JSON, status `sent`, with a fresh uuid v4: the
/// shape of [`crate::notify::Notification`], written without building one.
fn notification_json(
    user_id: &Value,
    message: &str,
    kind: &str,
    event_id: Option<&str>,
    now: &str,
) -> String {
    #[derive(serde::Serialize)]
    struct Sent<'a> {
        notification_id: &'a str,
        user_id: &'a Value,
        message: &'a str,
        status: &'a str,
        kind: &'a str,
        created_at: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        event_id: Option<&'a str>,
    }
    let mut id = uuid::Uuid::encode_buffer();
    let sent = Sent {
        notification_id: uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id),
        user_id,
        message,
        status: "sent",
        kind,
        created_at: now,
        event_id,
    };
    serde_json::to_string(&sent).expect("a notification serializes")
}

fn rate_message(change: &RateChangeEvent) -> String {
    match change.previous_rate {
        Some(previous) => format!(
            "Rate {} changed from {previous} to {}",
            change.pair, change.rate
        ),
        None => format!("Rate {} set to {}", change.pair, change.rate),
    }
}

fn plan_rate_change(payload: &[u8]) -> Result<RateChangeEvent, String> {
    let bad = |e: String| format!("not a rate change: {e}");
    let mut change: RateChangeEvent =
        serde_json::from_slice(payload).map_err(|e| bad(e.to_string()))?;
    crate::store::check_id("event_id", &change.event_id).map_err(bad)?;
    let pair: crate::rates::Pair = change.pair.parse().map_err(|e| bad(format!("{e:#}")))?;
    let named = |code: &str| crate::money::Currency::parse(code).ok();
    if named(&change.base) != Some(pair.base) || named(&change.quote) != Some(pair.quote) {
        return Err(bad(format!(
            "base {:?} and quote {:?} do not make the pair {pair}",
            change.base, change.quote
        )));
    }
    for rate in std::iter::once(&change.rate).chain(&change.previous_rate) {
        crate::rates::validate_rate(&rate.to_string()).map_err(|e| bad(format!("{e:#}")))?;
    }
    if change.changed_at.is_empty()
        || change.changed_at.len() > 64
        || change.changed_at.chars().any(char::is_control)
    {
        return Err(bad(
            "changed_at must be 1 to 64 bytes without control characters".into(),
        ));
    }
    change.pair = pair.to_string();
    Ok(change)
}

struct Notifier {
    redis: Redis,
    transactions_topic: String,
    dedup_window: u32,
    replay: bool,
    /// On a cluster, pushes written by a batch whose call failed in another
    /// slot (`topic/partition/offset` and list): the worker applies the
    /// batch again in parts to find the message at fault, and these are
    /// then found written. They were written by this run, so they count
    /// as notified, not as duplicates.
    written_before: HashSet<String>,
}

/// Above this many remembered pushes (left by messages dead-lettered after
/// a partial write), the memory starts again: at worst a count is off.
const WRITTEN_BEFORE_LIMIT: usize = 100_000;

impl Notifier {
    async fn watchers(
        &mut self,
        pairs: HashSet<String>,
    ) -> anyhow::Result<HashMap<String, Vec<String>>> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let pairs: Vec<String> = pairs.into_iter().collect();
        let reads = pairs
            .iter()
            .map(|pair| redis::cmd("SMEMBERS").arg(keys::watchers(pair)).to_owned())
            .collect();
        let members = crate::store::query_each::<Vec<String>>(&mut self.redis, reads)
            .await
            .context("reading watchers")?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .context("reading watchers")?;
        Ok(pairs.into_iter().zip(members).collect())
    }

    /// Pushes every planned notification, in message order, and answers 1
    /// for each pushed, 0 for each found there already. On one server, one
    /// script call for the batch; on a cluster, one per hash slot of the
    /// lists (many in flight), each with its slot's own applied-offsets
    /// record, so each slot's pushes are exactly once on their own and a
    /// crash between two slots' calls leaves the rest to the redelivery.
    async fn push(&mut self, planned: &[(&Delivery, &Push)]) -> anyhow::Result<Vec<i64>> {
        if planned.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_slot: Vec<(String, Vec<usize>)> = Vec::new();
        if self.redis.is_cluster() {
            let mut slots: HashMap<u16, Vec<usize>> = HashMap::new();
            for (i, (_, push)) in planned.iter().enumerate() {
                let slot = crate::store::slot(push.user_key.as_bytes());
                slots.entry(slot).or_default().push(i);
            }
            by_slot.extend(
                slots
                    .into_iter()
                    .map(|(slot, members)| (keys::notify_applied_in(slot), members)),
            );
        } else {
            by_slot.push((
                keys::NOTIFY_APPLIED.to_string(),
                (0..planned.len()).collect(),
            ));
        }
        let calls = by_slot
            .iter()
            .map(|(applied, members)| self.notify_call(applied, planned, members))
            .collect();
        let answers = crate::store::invoke_each::<Vec<i64>>(&mut self.redis, calls)
            .await
            .context("storing notifications")?;
        let written = |i: usize| {
            let (delivery, push) = planned[i];
            format!(
                "{}/{}/{}/{}",
                delivery.topic, delivery.partition, delivery.offset, push.user_key
            )
        };
        let mut pushed = vec![0; planned.len()];
        let mut failure = None;
        for ((_, members), answer) in by_slot.iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    for (&i, new) in members.iter().zip(answer) {
                        pushed[i] = new;
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            if self.written_before.len() > WRITTEN_BEFORE_LIMIT {
                self.written_before.clear();
            }
            for i in (0..planned.len()).filter(|&i| pushed[i] == 1) {
                self.written_before.insert(written(i));
            }
            return Err(e).context("storing notifications");
        }
        if !self.written_before.is_empty() {
            for (i, new) in pushed.iter_mut().enumerate() {
                if self.written_before.remove(&written(i)) {
                    *new = 1;
                }
            }
        }
        Ok(pushed)
    }

    /// The script call that pushes `planned[members]` with the applied
    /// offsets in `applied`: the keys first, then five arguments per push.
    fn notify_call(
        &self,
        applied: &str,
        planned: &[(&Delivery, &Push)],
        members: &[usize],
    ) -> redis::ScriptInvocation<'static> {
        let mut call = NOTIFY.invocation();
        call.key(applied);
        for &i in members {
            call.key(planned[i].1.user_key.as_str());
        }
        call.arg(self.dedup_window)
            .arg(if self.replay { "1" } else { "0" });
        let mut field = String::new();
        for &i in members {
            let (delivery, push) = planned[i];
            field.clear();
            {
                use std::fmt::Write as _;
                let _ = write!(field, "{}/{}", delivery.topic, delivery.partition);
            }
            call.arg(field.as_str())
                .arg(delivery.offset)
                .arg(delivery.timestamp_ms.unwrap_or(-1))
                .arg(push.json.as_str())
                .arg(match &push.mark {
                    Some(_) if self.replay && push.first => "",
                    Some(mark) => mark.as_str(),
                    None => "",
                });
        }
        call
    }

    /// The subscription pipeline: a payment is `completed` once its user is notified. Runs
    /// after the pushes, so a payment is never completed without its notification.
    async fn complete_payments(&mut self, plans: &[Plan]) -> anyhow::Result<()> {
        let ids: Vec<&str> = plans
            .iter()
            .filter_map(|plan| match plan {
                Plan::Transaction(Push {
                    payment_id: Some(id),
                    ..
                }) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        payments::complete(&mut self.redis, &ids).await
    }
}

/// Plans each message of a batch from its bytes: the CPU part of
/// notifying, done while the previous batch is in Redis.
fn plan_batch(batch: &[Delivery], transactions_topic: &str) -> Vec<Plan> {
    let now = crate::clock::now_rfc3339();
    batch
        .iter()
        .map(|d| {
            if d.topic == transactions_topic {
                plan_transaction(&d.payload, &now).map(Plan::Transaction)
            } else {
                plan_rate_change(&d.payload).map(Plan::RateChange)
            }
            .unwrap_or_else(Plan::Dead)
        })
        .collect()
}

impl BatchHandler for Notifier {
    type Decoded = Plan;

    fn decoder(&self) -> worker::Decoder<Plan> {
        let topic = self.transactions_topic.clone();
        std::sync::Arc::new(move |batch| plan_batch(batch, &topic))
    }

    async fn prepare(&mut self) -> anyhow::Result<()> {
        NOTIFY.load(&mut self.redis).await?;
        payments::load_completion(&mut self.redis).await?;
        Ok(())
    }

    async fn apply(&mut self, batch: &[Delivery], plans: &[Plan]) -> anyhow::Result<Vec<Verdict>> {
        let now = crate::clock::now_rfc3339();
        let pairs = plans
            .iter()
            .filter_map(|p| match p {
                Plan::RateChange(change) => Some(change.pair.clone()),
                _ => None,
            })
            .collect();
        let watchers = self.watchers(pairs).await?;

        // Every push of the batch, in message order, in one script call:
        // the keys first, then five arguments per push.
        let rate_pushes: Vec<Vec<Push>> = plans
            .iter()
            .map(|plan| match plan {
                Plan::RateChange(change) => {
                    let message = rate_message(change);
                    let users = watchers.get(&change.pair).into_iter().flatten();
                    users
                        .map(|user| Push {
                            user_key: keys::notifications(user),
                            json: notification_json(
                                &Value::String(user.clone()),
                                &message,
                                "rate_change",
                                None,
                                &now,
                            ),
                            mark: None,
                            first: false,
                            payment_id: None,
                        })
                        .collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let mut pushes_per_message = Vec::with_capacity(plans.len());
        let mut planned: Vec<(&Delivery, &Push)> = Vec::with_capacity(plans.len());
        for ((delivery, plan), rate_pushes) in batch.iter().zip(plans).zip(&rate_pushes) {
            let pushes: &[Push] = match plan {
                Plan::Dead(_) => &[],
                Plan::Transaction(push) => std::slice::from_ref(push),
                Plan::RateChange(_) => rate_pushes,
            };
            pushes_per_message.push(pushes.len());
            planned.extend(pushes.iter().map(|push| (delivery, push)));
        }
        let pushed = self.push(&planned).await?;
        self.complete_payments(plans).await?;

        let mut pushed = pushed.into_iter();
        let verdicts = batch
            .iter()
            .zip(plans)
            .zip(pushes_per_message)
            .map(|((delivery, plan), count)| {
                let new: i64 = pushed.by_ref().take(count).sum();
                match plan {
                    Plan::Dead(reason) => Verdict::dead_letter(delivery, reason.clone()),
                    _ if count == 0 => Verdict::new(NO_WATCHERS, Vec::new()),
                    _ if new > 0 => Verdict::new(NOTIFIED, Vec::new()),
                    _ => Verdict::new(DUPLICATE, Vec::new()),
                }
            })
            .collect();
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
        inputs: vec![topics.transactions.clone(), topics.rate_changes.clone()],
        outputs: Vec::new(),
        outcomes: &[NOTIFIED, DUPLICATE, NO_WATCHERS, DEAD_LETTERED],
        limits: args.limits.limits()?,
        redis: Some(redis.clone()),
    };
    let mut notifier = Notifier {
        redis,
        transactions_topic: topics.transactions.clone(),
        dedup_window: args.dedup_window,
        replay: args.replay,
        written_before: HashSet::new(),
    };
    let summary = worker::run(kafka, &spec, &mut notifier, shutdown).await?;
    output.emit(&summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-23T13:45:00.123Z";

    #[test]
    fn outcome_events_become_notifications_in_the_notification_services_shape() {
        let push = plan_transaction(
            br#"{"transaction_id": "t1", "user_id": 42, "status": "completed"}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(push.user_key, "notifications:42");
        assert_eq!(
            push.mark.as_deref(),
            Some(r#""message":"Transaction t1 is completed""#)
        );
        let n: Value = serde_json::from_str(&push.json).unwrap();
        assert_eq!(n["message"], "Transaction t1 is completed");
        assert_eq!(n["status"], "sent");
        assert_eq!(n["user_id"], 42);
        assert_eq!(
            uuid::Uuid::parse_str(n["notification_id"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            4
        );
        assert_eq!(n["created_at"], NOW);
        assert_eq!(n["kind"], "transaction");
        // The stored shape is the one `notify list` reads back.
        let read: crate::notify::Notification = serde_json::from_str(&push.json).unwrap();
        assert_eq!(read.message, "Transaction t1 is completed");
        assert_eq!(read.event_id, None);
    }

    #[test]
    fn a_field_given_twice_is_refused_not_guessed() {
        let twice = br#"{"transaction_id":"t1","user_id":"alice","user_id":"mallory","status":"completed"}"#;
        let error = plan_transaction(twice, NOW).unwrap_err();
        assert!(error.contains("duplicate field"), "{error}");
    }

    #[test]
    fn malformed_events_say_why() {
        assert!(plan_transaction(b"{oops", NOW)
            .unwrap_err()
            .starts_with("not JSON"));
        assert_eq!(
            plan_transaction(br#"{"transaction_id":"t","status":"x"}"#, NOW)
                .err()
                .as_deref(),
            Some("missing field \"user_id\"")
        );
    }
}

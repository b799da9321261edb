//! `payctl notify consume`: the notification worker (seed 000, seed 002).
//!
//! A transaction event becomes one notification for its user; a rate change
//! one for each user watching the pair. Each (event, user) notifies once:
//! `notified:{identity}` is set with the push, atomically, and expires
//! after `--remember`.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use anyhow::Context as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Topics};
use crate::events::RateChangeEvent;
use crate::notify::Notification;
use crate::output::Output;
use crate::payments;
use crate::store::{keys, Redis, Script};
use crate::worker::{self, BatchHandler, Delivery, Verdict, WorkerArgs, WorkerSpec, DEAD_LETTERED};

/// Turn transaction events and rate changes into notifications (a worker).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl notify consume                     # until SIGINT/SIGTERM
  payctl notify consume --until-idle 5 --output json")]
pub struct Args {
    /// Consumer group.
    #[arg(long, env = "PAYCTL_NOTIFY_GROUP", default_value = "payctl-notify")]
    pub group: String,
    /// How long to remember that an event was notified, in seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub remember: u64,
    #[command(flatten)]
    pub limits: WorkerArgs,
}

const NOTIFIED: &str = "notified";
const DUPLICATE: &str = "duplicate";
const NO_WATCHERS: &str = "no-watchers";

static NOTIFY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- Every notification of a batch, in order, in one call.
-- KEYS: marker 1, list 1, marker 2, list 2, ... ARGV: seconds to remember, JSON 1, JSON 2, ...
-- Returns 1 for each one pushed, 0 for each already sent.
local pushed = {}
for i = 1, #ARGV - 1 do
  local marker, list = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('EXISTS', marker) == 1 then
    pushed[i] = 0
  else
    -- Push first: if the push fails, no marker claims it was sent.
    redis.call('RPUSH', list, ARGV[i + 1])
    redis.call('SET', marker, '1', 'EX', ARGV[1])
    pushed[i] = 1
  end
end
return pushed
"#,
    )
});

/// One notification to push, unless its identity was notified before.
#[derive(Debug)]
struct Push {
    identity: String,
    user_key: String,
    json: String,
    /// A subscription payment to mark `completed` once this is written.
    payment_id: Option<String>,
}

/// What one message asks for.
enum Plan {
    Dead(String),
    Transaction(Push),
    RateChange(RateChangeEvent),
}

/// The user id as a key part: seed 000 accepts strings and numbers.
fn user_key(user: &Value) -> Result<String, String> {
    match user {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!(
            "user_id must be a non-empty string or a number, got {other}"
        )),
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Seed 000: `{transaction_id, user_id, status}` → "Transaction {id} is {status}".
fn plan_transaction(payload: &[u8]) -> Result<Push, String> {
    let event: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| {
        event
            .get(name)
            .ok_or_else(|| format!("missing field {name:?}"))
    };
    let transaction_id =
        scalar_text(field("transaction_id")?).ok_or("transaction_id must be a string or number")?;
    let user_id = field("user_id")?.clone();
    let status = field("status")?
        .as_str()
        .ok_or("status must be a string")?
        .to_string();
    let user = user_key(&user_id)?;
    let identity = match event.get("event_id").and_then(Value::as_str) {
        Some(id) => format!("event:{id}"),
        None => format!("transaction:{transaction_id}:{user}:{status}"),
    };
    let message = format!("Transaction {transaction_id} is {status}");
    let notification = Notification::sent(user_id, message, "transaction");
    Ok(Push {
        identity,
        user_key: keys::notifications(&user),
        json: serde_json::to_string(&notification).expect("a notification serializes"),
        payment_id: event
            .get("payment_id")
            .and_then(Value::as_str)
            .map(String::from),
    })
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

struct Notifier {
    redis: Redis,
    transactions_topic: String,
    remember_secs: u64,
}

impl Notifier {
    async fn watchers(
        &mut self,
        pairs: HashSet<String>,
    ) -> anyhow::Result<HashMap<String, Vec<String>>> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let pairs: Vec<String> = pairs.into_iter().collect();
        let mut pipe = redis::pipe();
        for pair in &pairs {
            pipe.smembers(keys::watchers(pair));
        }
        let members: Vec<Vec<String>> = pipe
            .query_async(&mut self.redis)
            .await
            .context("reading watchers")?;
        Ok(pairs.into_iter().zip(members).collect())
    }
}

impl Notifier {
    /// Seed 003: a payment is `completed` once its user is notified. Runs
    /// after the pushes, so a payment is never completed without its notification.
    async fn complete_payments(&mut self, plans: &[Plan]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        let mut any = false;
        for plan in plans {
            if let Plan::Transaction(Push {
                payment_id: Some(id),
                ..
            }) = plan
            {
                pipe.add_command(payments::complete_command(id));
                any = true;
            }
        }
        if any {
            let _: Vec<i64> = pipe
                .query_async(&mut self.redis)
                .await
                .context("completing payments")?;
        }
        Ok(())
    }
}

impl BatchHandler for Notifier {
    async fn prepare(&mut self) -> anyhow::Result<()> {
        NOTIFY.load(&mut self.redis).await?;
        payments::load_completion(&mut self.redis).await?;
        Ok(())
    }

    async fn apply(&mut self, batch: &[Delivery]) -> anyhow::Result<Vec<Verdict>> {
        let plans: Vec<Plan> = batch
            .iter()
            .map(|d| {
                if d.topic == self.transactions_topic {
                    plan_transaction(&d.payload).map(Plan::Transaction)
                } else {
                    serde_json::from_slice::<RateChangeEvent>(&d.payload)
                        .map(Plan::RateChange)
                        .map_err(|e| format!("not a rate change: {e}"))
                }
                .unwrap_or_else(Plan::Dead)
            })
            .collect();
        let pairs = plans
            .iter()
            .filter_map(|p| match p {
                Plan::RateChange(change) => Some(change.pair.clone()),
                _ => None,
            })
            .collect();
        let watchers = self.watchers(pairs).await?;

        // Every push of the batch, in message order, in one script call.
        let mut pushes_per_message = Vec::with_capacity(plans.len());
        let mut all_keys: Vec<String> = Vec::new();
        let mut all_json: Vec<String> = Vec::new();
        for plan in &plans {
            let pushes: Vec<Push> = match plan {
                Plan::Dead(_) => Vec::new(),
                Plan::Transaction(push) => vec![Push {
                    identity: push.identity.clone(),
                    user_key: push.user_key.clone(),
                    json: push.json.clone(),
                    payment_id: push.payment_id.clone(),
                }],
                Plan::RateChange(change) => watchers
                    .get(&change.pair)
                    .into_iter()
                    .flatten()
                    .map(|user| {
                        let n = Notification::sent(
                            Value::String(user.clone()),
                            rate_message(change),
                            "rate_change",
                        );
                        Push {
                            identity: format!("rate:{}:{user}", change.event_id),
                            user_key: keys::notifications(user),
                            json: serde_json::to_string(&n).expect("a notification serializes"),
                            payment_id: None,
                        }
                    })
                    .collect(),
            };
            pushes_per_message.push(pushes.len());
            for push in pushes {
                all_keys.push(keys::notified(&push.identity));
                all_keys.push(push.user_key);
                all_json.push(push.json);
            }
        }
        let pushed: Vec<i64> = if all_json.is_empty() {
            Vec::new()
        } else {
            let key_refs: Vec<&str> = all_keys.iter().map(String::as_str).collect();
            let mut call = NOTIFY.call(&key_refs);
            call.arg(self.remember_secs).arg(&all_json);
            call.query_async(&mut self.redis)
                .await
                .context("storing notifications")?
        };

        self.complete_payments(&plans).await?;

        let mut pushed = pushed.into_iter();
        let verdicts = batch
            .iter()
            .zip(&plans)
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
    };
    let mut notifier = Notifier {
        redis,
        transactions_topic: topics.transactions.clone(),
        remember_secs: args.remember.max(1),
    };
    let summary = worker::run(kafka, &spec, &mut notifier, shutdown).await?;
    output.emit(&summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_events_become_seed_000_notifications() {
        let push =
            plan_transaction(br#"{"transaction_id": "t1", "user_id": 42, "status": "completed"}"#)
                .unwrap();
        assert_eq!(push.user_key, "notifications:42");
        assert_eq!(push.identity, "transaction:t1:42:completed");
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
    }

    #[test]
    fn malformed_events_say_why() {
        assert!(plan_transaction(b"{oops")
            .unwrap_err()
            .starts_with("not JSON"));
        assert_eq!(
            plan_transaction(br#"{"transaction_id":"t","status":"x"}"#)
                .err()
                .as_deref(),
            Some("missing field \"user_id\"")
        );
    }
}

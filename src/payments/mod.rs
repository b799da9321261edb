//! Subscription payments (the subscription pipeline): submit → save → process → notify.
//!
//! Statuses are the subscription pipeline's. Processing: `new` (saved), `in_processing`
//! (sent to the processor), `processed` (the processor answered and the
//! outcome event is on `payment_transactions`), `completed` (the user's
//! notification was written by `notify consume`), `duplicated` (an older
//! request of a user who asked again). Payment: `unknown` until the
//! processor answers, then `accepted`, `decline` or `error`.
//!
//! Redis: `payment:{id}` holds the record's JSON; the sorted sets
//! `payments` and `payments:user:{user}` index it by creation time; the sets
//! `payments:status:{processing status}` hold ids by processing status, and
//! `payments:unannounced` the processed payments whose event is not yet
//! acknowledged. `subscription:{user}` is a hash (`status`, `plan`,
//! `amount`, `currency`, `payment_id`, `since`, `ended_at`).
//! `payments:claim:{kind}:{user}` holds the id of the user's payment (or
//! refund) that is with the processor: one charge per subscription (see
//! `claim.lua`).
//!
//! Ids and plans arrive from the topic and from flags; they go into Redis
//! keys, HTTP headers and bodies, so [`check_id`] and [`check_plan`] run
//! before any of them is used.

pub mod list;
pub mod process;
pub mod processor;
pub mod save;
pub mod show;
pub mod simulate;
mod slots;
/// A user's claim key on a Redis Cluster (see [`keys::claim`] for one server).
pub use slots::claim_key;
pub mod stats;
pub mod submit;

use std::collections::HashMap;

use anyhow::Context as _;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::money::Decimal;
use crate::output::{self, Rendered, Report};
use crate::store::Redis;

/// Where a payment is in the pipeline.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingStatus {
    New,
    InProcessing,
    Processed,
    Completed,
    Duplicated,
}

impl ProcessingStatus {
    pub const ALL: [ProcessingStatus; 5] = [
        ProcessingStatus::New,
        ProcessingStatus::InProcessing,
        ProcessingStatus::Processed,
        ProcessingStatus::Completed,
        ProcessingStatus::Duplicated,
    ];

    /// The snake_case name stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingStatus::New => "new",
            ProcessingStatus::InProcessing => "in_processing",
            ProcessingStatus::Processed => "processed",
            ProcessingStatus::Completed => "completed",
            ProcessingStatus::Duplicated => "duplicated",
        }
    }
}

/// What the processor said.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Accepted,
    Error,
    Decline,
    Unknown,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 4] = [
        PaymentStatus::Accepted,
        PaymentStatus::Error,
        PaymentStatus::Decline,
        PaymentStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Accepted => "accepted",
            PaymentStatus::Error => "error",
            PaymentStatus::Decline => "decline",
            PaymentStatus::Unknown => "unknown",
        }
    }
}

/// A payment for a subscription, or a refund of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    Payment,
    Refund,
}

impl PaymentKind {
    /// The snake_case name stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Payment => "payment",
            PaymentKind::Refund => "refund",
        }
    }
}

/// The longest id or plan payctl accepts, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Checks an id (`payment_id`, `user_id`) before it goes into a Redis key or
/// an HTTP header: 1 to [`MAX_ID_BYTES`] bytes, no whitespace, no control
/// characters. `Err` says what is wrong, naming `field`, not echoing the value.
pub fn check_id(field: &str, value: &str) -> Result<(), String> {
    check_text(field, value)?;
    if value.chars().any(char::is_whitespace) {
        return Err(format!("{field} contains whitespace"));
    }
    Ok(())
}

/// Checks a plan name (it goes into the subscription and the processor's
/// request): 1 to [`MAX_ID_BYTES`] bytes, not only whitespace, no control
/// characters.
pub fn check_plan(field: &str, value: &str) -> Result<(), String> {
    check_text(field, value)?;
    if value.trim().is_empty() {
        return Err(format!("{field} is only whitespace"));
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(format!(
            "{field} is {} bytes long, at most {MAX_ID_BYTES}",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{field} contains a control character (U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(())
}

/// A request on the `payments` topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentRequest {
    pub payment_id: String,
    pub user_id: String,
    pub plan: String,
    pub amount: Decimal,
    pub currency: String,
    pub kind: PaymentKind,
    #[serde(default)]
    pub requested_at: Option<String>,
    /// The request time in Unix milliseconds; "latest" compares these.
    #[serde(default)]
    pub requested_ms: Option<u64>,
}

/// `payment:{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    pub payment_id: String,
    pub user_id: String,
    pub plan: String,
    pub amount: Decimal,
    pub currency: String,
    pub kind: PaymentKind,
    pub processing_status: ProcessingStatus,
    pub payment_status: PaymentStatus,
    pub created_at: String,
    pub updated_at: String,
    /// Milliseconds since the epoch of the request: "latest" means highest.
    pub requested_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Payment {
    fn row(&self) -> Vec<String> {
        vec![
            self.payment_id.clone(),
            self.user_id.clone(),
            format!("{:?}", self.kind).to_lowercase(),
            self.plan.clone(),
            format!("{} {}", self.amount, self.currency),
            self.processing_status.as_str().into(),
            self.payment_status.as_str().into(),
            self.created_at.clone(),
        ]
    }
}

/// A table of payments.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct PaymentList(pub Vec<Payment>);

impl Report for PaymentList {
    fn render(&self) -> Rendered {
        let mut table = output::table([
            "payment",
            "user",
            "kind",
            "plan",
            "amount",
            "processing",
            "payment",
            "created_at",
        ]);
        for p in &self.0 {
            table.add_row(p.row());
        }
        Rendered::Table(table)
    }
}

impl Report for Payment {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("payment", self.payment_id.clone()),
            ("user", self.user_id.clone()),
            ("kind", format!("{:?}", self.kind).to_lowercase()),
            ("plan", self.plan.clone()),
            ("amount", format!("{} {}", self.amount, self.currency)),
            ("processing_status", self.processing_status.as_str().into()),
            ("payment_status", self.payment_status.as_str().into()),
            ("created_at", self.created_at.clone()),
            ("updated_at", self.updated_at.clone()),
        ];
        if let Some(detail) = &self.detail {
            rows.push(("detail", detail.clone()));
        }
        Rendered::Table(output::record_table(rows))
    }
}

/// Redis keys of the payments domain.
pub mod keys {
    pub fn payment(id: &str) -> String {
        format!("payment:{id}")
    }
    pub const PAYMENTS: &str = "payments";
    pub fn by_user(user: &str) -> String {
        format!("payments:user:{user}")
    }
    pub fn by_status(status: super::ProcessingStatus) -> String {
        format!("payments:status:{}", status.as_str())
    }
    pub const UNANNOUNCED: &str = "payments:unannounced";
    pub fn subscription(user: &str) -> String {
        format!("subscription:{user}")
    }
    /// The id of the user's payment (or refund) that is with the processor.
    pub fn claim(kind: super::PaymentKind, user: &str) -> String {
        format!("payments:claim:{}:{user}", kind.as_str())
    }
}

/// The stored JSON of each payment id, in order (`None`: no record): an
/// `MGET` per thousand on one server; on a cluster, where the records
/// live in many slots, a `GET` each, many in flight.
pub async fn records(redis: &mut Redis, ids: &[String]) -> anyhow::Result<Vec<Option<String>>> {
    let mut stored = Vec::with_capacity(ids.len());
    if redis.is_cluster() {
        let reads = ids
            .iter()
            .map(|id| redis::cmd("GET").arg(keys::payment(id)).to_owned())
            .collect();
        for answer in crate::store::query_each::<Option<String>>(redis, reads)
            .await
            .context("reading payments")?
        {
            stored.push(answer.context("reading payments")?);
        }
        return Ok(stored);
    }
    for chunk in ids.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|id| keys::payment(id)).collect();
        let part: Vec<Option<String>> = redis.mget(&keys).await.context("reading payments")?;
        stored.extend(part);
    }
    Ok(stored)
}

/// Each payment by id, in order; `None` where there is no record or it is
/// not a payment record.
pub async fn get_each(redis: &mut Redis, ids: &[String]) -> anyhow::Result<Vec<Option<Payment>>> {
    Ok(records(redis, ids)
        .await?
        .into_iter()
        .map(|json| json.and_then(|json| serde_json::from_str(&json).ok()))
        .collect())
}

/// Reads payments by id, skipping ids with no record.
pub async fn get_many(redis: &mut Redis, ids: &[String]) -> anyhow::Result<Vec<Payment>> {
    let mut payments = Vec::with_capacity(ids.len());
    for json in records(redis, ids).await?.into_iter().flatten() {
        payments.push(serde_json::from_str(&json).context("reading a payment record")?);
    }
    Ok(payments)
}

/// One payment.
pub async fn get(redis: &mut Redis, id: &str) -> anyhow::Result<Option<Payment>> {
    Ok(get_many(redis, &[id.to_string()]).await?.pop())
}

/// A user's subscription hash, if it is active.
pub async fn active_subscription(
    redis: &mut Redis,
    user: &str,
) -> anyhow::Result<Option<HashMap<String, String>>> {
    let subscription: HashMap<String, String> = redis
        .hgetall(keys::subscription(user))
        .await
        .with_context(|| format!("reading the subscription of {user}"))?;
    let active = subscription.get("status").map(String::as_str) == Some("active");
    Ok(active.then_some(subscription))
}

static COMPLETE: std::sync::LazyLock<crate::store::Script> = std::sync::LazyLock::new(|| {
    crate::store::Script::new(
        r#"
-- A processed payment whose notification is written becomes completed.
-- KEYS: payment, then (on one server) the processed and completed sets.
-- ARGV: id. Returns 1 completed now, 2 completed before, 0 not processed.
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, payment = pcall(cjson.decode, current)
if not ok or type(payment) ~= 'table' then return 0 end
if payment.processing_status == 'completed' then return 2 end
if payment.processing_status ~= 'processed' then return 0 end
local updated = string.gsub(current, '"processing_status":"processed"', '"processing_status":"completed"', 1)
redis.call('SET', KEYS[1], updated)
if #KEYS == 3 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
end
return 1
"#,
    )
});

/// Loads the completion script (call before [`complete`]).
pub async fn load_completion(redis: &mut Redis) -> anyhow::Result<()> {
    COMPLETE.load(redis).await
}

/// Marks `processed` payments `completed`: their notifications have been
/// written. On one server the record and the status sets change in one
/// step per payment, all in one round trip. On a cluster, where the sets
/// live in other slots, the record changes first and the sets follow for
/// every payment completed now or before, so a redelivery after a crash
/// between the two finishes the sets.
pub async fn complete(redis: &mut Redis, payment_ids: &[&str]) -> anyhow::Result<()> {
    if payment_ids.is_empty() {
        return Ok(());
    }
    let processed = keys::by_status(ProcessingStatus::Processed);
    let completed = keys::by_status(ProcessingStatus::Completed);
    if !redis.is_cluster() {
        let mut pipe = redis::pipe();
        for id in payment_ids {
            pipe.add_command({
                let mut cmd = COMPLETE.call(&[&keys::payment(id), &processed, &completed]);
                cmd.arg(*id);
                cmd
            });
        }
        let _: Vec<i64> = pipe
            .query_async(redis)
            .await
            .context("completing payments")?;
        return Ok(());
    }
    let records = payment_ids
        .iter()
        .map(|id| {
            let mut call = COMPLETE.invocation();
            call.key(keys::payment(id)).arg(*id);
            call
        })
        .collect();
    let answers = crate::store::invoke_each::<i64>(redis, records)
        .await
        .context("completing payments")?;
    let mut done = Vec::new();
    for (id, answer) in payment_ids.iter().zip(answers) {
        if answer.context("completing a payment")? > 0 {
            done.push((
                ProcessingStatus::Processed,
                ProcessingStatus::Completed,
                *id,
            ));
        }
    }
    slots::move_in_sets(
        redis,
        &done,
        "moving completed payments between status sets",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_printable() {
        for good in [
            "alice",
            "a",
            "7d1c2a9e-0b7f-4a53-8f58-7c1f1c3e9a10",
            "пользователь",
            &"x".repeat(128),
        ] {
            assert_eq!(check_id("user_id", good), Ok(()), "{good:?}");
        }
        let cases = [
            ("", "user_id is empty"),
            (&*"x".repeat(129), "user_id is 129 bytes long, at most 128"),
            // 43 three-byte characters: 129 bytes, though only 43 characters.
            (&*"€".repeat(43), "user_id is 129 bytes long, at most 128"),
            ("a\0b", "user_id contains a control character (U+0000)"),
            (
                "a\r\nX-Evil: 1",
                "user_id contains a control character (U+000D)",
            ),
            (
                "\u{1b}[31m",
                "user_id contains a control character (U+001B)",
            ),
            ("a\u{7f}", "user_id contains a control character (U+007F)"),
            ("a\u{85}", "user_id contains a control character (U+0085)"),
            ("al ice", "user_id contains whitespace"),
            (" ", "user_id contains whitespace"),
            ("a\u{2028}", "user_id contains whitespace"),
        ];
        for (bad, reason) in cases {
            assert_eq!(check_id("user_id", bad), Err(reason.to_string()), "{bad:?}");
        }
    }

    #[test]
    fn plans_may_have_inner_spaces_but_not_only_spaces() {
        assert_eq!(check_plan("plan", "premium"), Ok(()));
        assert_eq!(check_plan("plan", "premium plus"), Ok(()));
        assert_eq!(check_plan("plan", ""), Err("plan is empty".to_string()));
        assert_eq!(
            check_plan("plan", " \t "),
            Err("plan contains a control character (U+0009)".to_string())
        );
        assert_eq!(
            check_plan("plan", "   "),
            Err("plan is only whitespace".to_string())
        );
        assert_eq!(
            check_plan("plan", "\u{3000}"),
            Err("plan is only whitespace".to_string())
        );
        assert_eq!(
            check_plan("plan", "gold\nX-Injected: 1"),
            Err("plan contains a control character (U+000A)".to_string())
        );
        assert!(check_plan("plan", &"p".repeat(129)).is_err());
    }
}

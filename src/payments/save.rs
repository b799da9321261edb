//! `payctl payments save`: the worker that stores payment requests (seed
//! 003's saver): processing status `new`, payment status `unknown`, once
//! per payment id.

use std::sync::LazyLock;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::money::{Currency, Money};
use crate::output::Output;
use crate::payments::{
    check_id, check_plan, keys, Payment, PaymentRequest, PaymentStatus, ProcessingStatus,
};
use crate::store::{run_pipeline, Redis, Script};
use crate::worker::{self, BatchHandler, Delivery, Verdict, WorkerArgs, WorkerSpec, DEAD_LETTERED};

/// Store payment requests from the payments topic (a worker).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl payments save\n  payctl payments save --until-idle 5")]
pub struct Args {
    /// Consumer group.
    #[arg(
        long,
        env = "PAYCTL_PAYMENTS_GROUP",
        default_value = "payctl-payments-save"
    )]
    pub group: String,
    #[command(flatten)]
    pub limits: WorkerArgs,
}

const SAVED: &str = "saved";
const ALREADY_SAVED: &str = "duplicate";

static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: payment, payments index, user index, status set. ARGV: JSON, score, id
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
return 1
"#,
    )
});

/// The latest `requested_ms` accepted: the last millisecond of year 9999.
const MAX_REQUESTED_MS: u64 = 253_402_300_799_999;
/// The longest `requested_at` accepted, in bytes (RFC 3339 needs 35).
const MAX_REQUESTED_AT_BYTES: usize = 64;

/// Checks a request and makes its record; `Err` is the dead-letter reason.
///
/// Every id is checked before it is used in a key: a message from the
/// topic may be forged or broken (see [`check_id`]).
///
/// `now` is the batch's time (RFC 3339): `updated_at`, and `created_at`
/// when the request has no `requested_at`.
fn record(request: PaymentRequest, fallback_ms: u64, now: &str) -> Result<Payment, String> {
    check_id("payment_id", &request.payment_id)?;
    check_id("user_id", &request.user_id)?;
    check_plan("plan", &request.plan)?;
    if let Some(at) = &request.requested_at {
        if at.len() > MAX_REQUESTED_AT_BYTES || at.chars().any(char::is_control) {
            return Err(format!(
                "requested_at must be a timestamp of at most {MAX_REQUESTED_AT_BYTES} bytes without control characters"
            ));
        }
    }
    if request.requested_ms.is_some_and(|ms| ms > MAX_REQUESTED_MS) {
        return Err(format!(
            "requested_ms is after year 9999 (at most {MAX_REQUESTED_MS})"
        ));
    }
    let currency = Currency::parse(&request.currency).map_err(|e| e.to_string())?;
    let amount =
        Money::amount(request.amount, currency).map_err(|e| format!("invalid amount: {e}"))?;
    let requested_ms = request.requested_ms.unwrap_or(fallback_ms);
    Ok(Payment {
        payment_id: request.payment_id,
        user_id: request.user_id,
        plan: request.plan,
        amount: amount.to_decimal(),
        currency: currency.code().into(),
        kind: request.kind,
        processing_status: ProcessingStatus::New,
        payment_status: PaymentStatus::Unknown,
        created_at: request.requested_at.unwrap_or_else(|| now.to_string()),
        updated_at: now.to_string(),
        requested_ms,
        detail: None,
    })
}

struct Saver {
    redis: Redis,
}

/// A request checked and made into its stored record (and that record's
/// JSON), or why it cannot be saved.
type Decoded = Result<(Payment, Vec<u8>), String>;

/// Checks each request of a batch and makes its record: the CPU part of
/// saving, done while the previous batch is in Redis.
fn decode(batch: &[Delivery]) -> Vec<Decoded> {
    let now_ms = crate::clock::now_millis();
    let now = crate::clock::rfc3339(now_ms);
    batch
        .iter()
        .map(|d| {
            let request = serde_json::from_slice::<PaymentRequest>(&d.payload)
                .map_err(|e| format!("not a payment request: {e}"))?;
            let payment = record(request, d.timestamp_ms.map_or(now_ms, |t| t as u64), &now)?;
            let json = serde_json::to_vec(&payment).map_err(|e| e.to_string())?;
            Ok((payment, json))
        })
        .collect()
}

impl BatchHandler for Saver {
    type Decoded = Decoded;

    fn decoder(&self) -> worker::Decoder<Decoded> {
        std::sync::Arc::new(decode)
    }

    async fn prepare(&mut self) -> anyhow::Result<()> {
        SAVE.load(&mut self.redis).await?;
        Ok(())
    }

    async fn apply(
        &mut self,
        batch: &[Delivery],
        records: &[Decoded],
    ) -> anyhow::Result<Vec<Verdict>> {
        let saved: Vec<i64> = if self.redis.is_cluster() {
            // The record and its indices live in different slots.
            let records: Vec<(&Payment, &[u8])> = records
                .iter()
                .flatten()
                .map(|(payment, json)| (payment, json.as_slice()))
                .collect();
            super::slots::save(&mut self.redis, &records).await?
        } else {
            self.save_here(records).await?
        };
        let mut saved = saved.into_iter();
        Ok(batch
            .iter()
            .zip(records)
            .map(|(delivery, record)| match record {
                Err(reason) => Verdict::dead_letter(delivery, reason.clone()),
                Ok(_) if saved.next() == Some(1) => Verdict::new(SAVED, Vec::new()),
                Ok(_) => Verdict::new(ALREADY_SAVED, Vec::new()),
            })
            .collect())
    }
}

impl Saver {
    /// Saves on one server: record and indices in one step per payment.
    async fn save_here(&mut self, records: &[Decoded]) -> anyhow::Result<Vec<i64>> {
        // One script call per payment, pipelined: measured on Redis 7.0
        // here, one call looping over the batch cost Redis more, not less.
        let mut pipe = redis::pipe();
        let new = keys::by_status(ProcessingStatus::New);
        for (payment, json) in records.iter().flatten() {
            let key = keys::payment(&payment.payment_id);
            let by_user = keys::by_user(&payment.user_id);
            let mut call = SAVE.call(&[&key, keys::PAYMENTS, &by_user, &new]);
            call.arg(json.as_slice())
                .arg(payment.requested_ms)
                .arg(&payment.payment_id);
            pipe.add_command(call);
        }
        run_pipeline(&pipe, &mut self.redis)
            .await
            .context("saving payments")
    }
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    redis: Redis,
    topic: &str,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = WorkerSpec {
        group: args.group,
        inputs: vec![topic.to_string()],
        outputs: Vec::new(),
        outcomes: &[SAVED, ALREADY_SAVED, DEAD_LETTERED],
        limits: args.limits.limits()?,
        redis: Some(redis.clone()),
    };
    let mut saver = Saver { redis };
    let summary = worker::run(kafka, &spec, &mut saver, shutdown).await?;
    output.emit(&summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-01-01T00:00:00.000Z";

    fn request(edit: impl FnOnce(&mut serde_json::Value)) -> PaymentRequest {
        let mut value = serde_json::json!({
            "payment_id": "p1", "user_id": "alice", "plan": "premium",
            "amount": 9.99, "currency": "USD", "kind": "payment"
        });
        edit(&mut value);
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_request_is_checked_field_by_field_before_any_key_is_made() {
        let saved = record(request(|_| {}), 7, NOW).unwrap();
        assert_eq!(
            (saved.requested_ms, saved.processing_status),
            (7, ProcessingStatus::New)
        );
        let reason = |edit: fn(&mut serde_json::Value)| record(request(edit), 7, NOW).unwrap_err();
        assert_eq!(
            reason(|v| v["payment_id"] = "p\u{0}1".into()),
            "payment_id contains a control character (U+0000)"
        );
        assert_eq!(
            reason(|v| v["user_id"] = "a b".into()),
            "user_id contains whitespace"
        );
        assert_eq!(
            reason(|v| v["plan"] = "\u{a0}".into()),
            "plan is only whitespace"
        );
        assert_eq!(
            reason(|v| v["requested_ms"] = u64::MAX.into()),
            "requested_ms is after year 9999 (at most 253402300799999)"
        );
        assert!(reason(|v| v["requested_at"] = "x".repeat(65).into()).starts_with("requested_at"));
        assert!(reason(|v| v["requested_at"] = "2025\n".into()).starts_with("requested_at"));
        // A currency is stored as its canonical code, whatever surrounds it.
        let currency = record(request(|v| v["currency"] = " usd\r\n".into()), 7, NOW).unwrap();
        assert_eq!(currency.currency, "USD");
    }
}

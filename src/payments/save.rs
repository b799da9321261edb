//! `payctl payments save`: the worker that stores payment requests (seed
//! 003's saver): processing status `new`, payment status `unknown`, once
//! per payment id.

use std::sync::LazyLock;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::money::{Currency, Money};
use crate::notify::validate_user;
use crate::output::Output;
use crate::payments::{keys, Payment, PaymentRequest, PaymentStatus, ProcessingStatus};
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

/// Checks a request and makes its record; `Err` is the dead-letter reason.
fn record(request: PaymentRequest, fallback_ms: u64) -> Result<Payment, String> {
    if request.payment_id.trim().is_empty() {
        return Err("payment_id is empty".into());
    }
    validate_user(&request.user_id).map_err(|e| e.to_string())?;
    if request.plan.trim().is_empty() {
        return Err("plan is empty".into());
    }
    let currency = Currency::parse(&request.currency).map_err(|e| e.to_string())?;
    let amount =
        Money::amount(request.amount, currency).map_err(|e| format!("invalid amount: {e}"))?;
    let requested_ms = request.requested_ms.unwrap_or(fallback_ms);
    let now = crate::clock::now_rfc3339();
    Ok(Payment {
        payment_id: request.payment_id,
        user_id: request.user_id,
        plan: request.plan,
        amount: amount.to_decimal(),
        currency: currency.code().into(),
        kind: request.kind,
        processing_status: ProcessingStatus::New,
        payment_status: PaymentStatus::Unknown,
        created_at: request.requested_at.unwrap_or_else(|| now.clone()),
        updated_at: now,
        requested_ms,
        detail: None,
    })
}

struct Saver {
    redis: Redis,
}

impl BatchHandler for Saver {
    async fn prepare(&mut self) -> anyhow::Result<()> {
        SAVE.load(&mut self.redis).await?;
        Ok(())
    }

    async fn apply(&mut self, batch: &[Delivery]) -> anyhow::Result<Vec<Verdict>> {
        let now = crate::clock::now_millis();
        let records: Vec<Result<Payment, String>> = batch
            .iter()
            .map(|d| {
                serde_json::from_slice::<PaymentRequest>(&d.payload)
                    .map_err(|e| format!("not a payment request: {e}"))
                    .and_then(|r| record(r, d.timestamp_ms.map_or(now, |t| t as u64)))
            })
            .collect();
        let mut pipe = redis::pipe();
        for payment in records.iter().flatten() {
            let key = keys::payment(&payment.payment_id);
            let by_user = keys::by_user(&payment.user_id);
            let new = keys::by_status(ProcessingStatus::New);
            let mut call = SAVE.call(&[&key, keys::PAYMENTS, &by_user, &new]);
            call.arg(serde_json::to_string(payment)?)
                .arg(payment.requested_ms)
                .arg(&payment.payment_id);
            pipe.add_command(call);
        }
        let saved: Vec<i64> = run_pipeline(&pipe, &mut self.redis)
            .await
            .context("saving payments")?;
        let mut saved = saved.into_iter();
        Ok(batch
            .iter()
            .zip(records)
            .map(|(delivery, record)| match record {
                Err(reason) => Verdict::dead_letter(delivery, reason),
                Ok(_) if saved.next() == Some(1) => Verdict::new(SAVED, Vec::new()),
                Ok(_) => Verdict::new(ALREADY_SAVED, Vec::new()),
            })
            .collect())
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
    };
    let mut saver = Saver { redis };
    let summary = worker::run(kafka, &spec, &mut saver, shutdown).await?;
    output.emit(&summary)
}

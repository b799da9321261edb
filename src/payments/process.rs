//! `payctl payments process`: seed 003's processor, as a batch job.
//!
//! Each pass:
//! 1. announces processed payments whose event was not yet acknowledged;
//! 2. claims `new` payments: per user the latest goes `in_processing`, the
//!    older ones become `duplicated`;
//! 3. sends every `in_processing` payment to the processor (retrying
//!    passing failures; one that still has no answer stays `in_processing`
//!    with payment status `unknown`, and is sent again on the next pass);
//! 4. stores each answer, atomically with its subscription change and its
//!    place in the announce queue, then produces its outcome event to
//!    `payment_transactions` and takes it off the queue once acknowledged.
//!
//! The payment becomes `completed` when `notify consume` has written the
//! user's notification for that event.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::StreamExt;
use rdkafka::producer::FutureProducer;
use redis::AsyncCommands;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::TransactionEvent;
use crate::kafka::produce_each;
use crate::output::{self, Output, Rendered, Report};
use crate::payments::processor::{Answer, HttpProcessor, Processor, Simulator};
use crate::payments::{get_many, keys, Payment, PaymentKind, PaymentStatus, ProcessingStatus};
use crate::store::{run_pipeline, Redis, Script};

/// Send saved payments to the processor: the latest per user, the rest duplicated.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl payments process                                   # one pass, built-in simulator
  payctl payments process --seed 42 --accept-rate 0.7 --decline-rate 0.2 --latency-ms 20
  payctl payments process --processor-url http://127.0.0.1:5001/execute_transaction --timeout 2 --retries 3
  payctl payments process --until-idle 10                   # keep going until nothing new for 10 s")]
pub struct Args {
    /// POST payments to this http:// URL instead of using the simulator.
    #[arg(long, env = "PAYCTL_PROCESSOR_URL")]
    pub processor_url: Option<String>,
    /// Seconds to wait for one processor answer.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Further attempts after a timeout or 5xx, with backoff.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Simulator: the seed its answers follow.
    #[arg(long, env = "PAYCTL_SIMULATOR_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Simulator: share of payments accepted.
    #[arg(long, default_value_t = 0.8)]
    pub accept_rate: f64,
    /// Simulator: share declined, the rest are errors [default: 0.1, or
    /// what is left after --accept-rate if less].
    #[arg(long)]
    pub decline_rate: Option<f64>,
    /// Simulator: milliseconds each answer takes.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Processor calls in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Keep taking new payments until none has come for this many seconds.
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<f64>,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct ProcessSummary {
    /// `new` payments sent on to the processor.
    pub claimed: u64,
    /// Older requests of users who asked again.
    pub duplicated: u64,
    /// Answers by payment status.
    pub answered: BTreeMap<&'static str, u64>,
    /// Payments with no answer yet: still `in_processing`, status `unknown`;
    /// the next run sends them again.
    pub unanswered: u64,
    /// Outcome events acknowledged by the broker.
    pub announced: u64,
    pub elapsed_ms: u64,
}

impl Report for ProcessSummary {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("claimed", self.claimed.to_string()),
            ("duplicated", self.duplicated.to_string()),
        ];
        rows.extend(self.answered.iter().map(|(k, v)| (*k, v.to_string())));
        rows.push(("unanswered", self.unanswered.to_string()));
        rows.push(("announced", self.announced.to_string()));
        rows.push(("seconds", format!("{:.2}", self.elapsed_ms as f64 / 1000.0)));
        Rendered::Table(output::record_table(rows))
    }
}

static TRANSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: payment, from set, to set, unannounced set, subscription hash
-- ARGV: id, expected processing status, new JSON, announce (1/0),
--       subscription action (activate | end | ''), plan, amount, currency, now
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, payment = pcall(cjson.decode, current)
if not ok or type(payment) ~= 'table' or payment.processing_status ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
if ARGV[4] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
if ARGV[5] == 'activate' then
  redis.call('HSET', KEYS[5], 'status', 'active', 'plan', ARGV[6], 'amount', ARGV[7],
             'currency', ARGV[8], 'payment_id', ARGV[1], 'since', ARGV[9])
  redis.call('HDEL', KEYS[5], 'ended_at')
elseif ARGV[5] == 'end' then
  redis.call('HSET', KEYS[5], 'status', 'ended', 'ended_at', ARGV[9])
end
return 1
"#,
    )
});

static TAKE_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local holder = redis.call('GET', KEYS[1]) \
         if holder and holder ~= ARGV[1] then return 0 end \
         redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1",
    )
});

static RELEASE_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

const LOCK_KEY: &str = "payments:process-lock";
const LOCK_SECS: u64 = 600;

/// Moves a payment from `from` to its new processing status, if it is
/// still in `from`; an answer also queues its event and changes the
/// subscription. Returns the command for a pipeline.
fn transition(
    payment: &Payment,
    from: ProcessingStatus,
    announce: bool,
) -> anyhow::Result<redis::Cmd> {
    let id = &payment.payment_id;
    let (payment_key, from_set, to_set) = (
        keys::payment(id),
        keys::by_status(from),
        keys::by_status(payment.processing_status),
    );
    let subscription = keys::subscription(&payment.user_id);
    let action = match (payment.kind, payment.payment_status) {
        (PaymentKind::Payment, PaymentStatus::Accepted) => "activate",
        (PaymentKind::Refund, PaymentStatus::Accepted) => "end",
        _ => "",
    };
    let mut cmd = TRANSITION.call(&[
        &payment_key,
        &from_set,
        &to_set,
        keys::UNANNOUNCED,
        &subscription,
    ]);
    cmd.arg(id)
        .arg(from.as_str())
        .arg(serde_json::to_string(payment)?)
        .arg(if announce { "1" } else { "0" })
        .arg(if announce { action } else { "" })
        .arg(&payment.plan)
        .arg(payment.amount.to_string())
        .arg(&payment.currency)
        .arg(&payment.updated_at);
    Ok(cmd)
}

async fn members(redis: &mut Redis, set: &str) -> anyhow::Result<Vec<Payment>> {
    let ids: Vec<String> = redis
        .smembers(set)
        .await
        .with_context(|| format!("reading {set}"))?;
    get_many(redis, &ids).await
}

/// Step 2: per user, the latest `new` request goes on; older ones are duplicated.
async fn claim(redis: &mut Redis, summary: &mut ProcessSummary) -> anyhow::Result<u64> {
    let fresh = members(redis, &keys::by_status(ProcessingStatus::New)).await?;
    if fresh.is_empty() {
        return Ok(0);
    }
    let mut by_user: HashMap<&str, Vec<&Payment>> = HashMap::new();
    for payment in &fresh {
        by_user.entry(&payment.user_id).or_default().push(payment);
    }
    let now = crate::clock::now_rfc3339();
    let mut pipe = redis::pipe();
    let mut planned = Vec::new();
    for requests in by_user.values_mut() {
        requests
            .sort_by(|a, b| (a.requested_ms, &a.payment_id).cmp(&(b.requested_ms, &b.payment_id)));
        let latest = requests.len() - 1;
        for (i, payment) in requests.iter().enumerate() {
            let status = if i == latest {
                ProcessingStatus::InProcessing
            } else {
                ProcessingStatus::Duplicated
            };
            let next = Payment {
                processing_status: status,
                updated_at: now.clone(),
                ..(*payment).clone()
            };
            pipe.add_command(transition(&next, ProcessingStatus::New, false)?);
            planned.push(status);
        }
    }
    let moved: Vec<i64> = pipe
        .query_async(redis)
        .await
        .context("claiming new payments")?;
    for (status, moved) in planned.into_iter().zip(moved) {
        match (status, moved) {
            (_, 0) => {}
            (ProcessingStatus::Duplicated, _) => summary.duplicated += 1,
            _ => summary.claimed += 1,
        }
    }
    Ok(summary.claimed)
}

/// Steps 1 and 4: produces the events of answered payments still queued
/// and takes each off the queue once the broker has it.
async fn announce(
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    summary: &mut ProcessSummary,
) -> anyhow::Result<()> {
    let queued = members(redis, keys::UNANNOUNCED).await?;
    if queued.is_empty() {
        return Ok(());
    }
    let occurred_at = crate::clock::now_rfc3339();
    let events: Vec<_> = queued
        .iter()
        .map(|p| {
            TransactionEvent {
                transaction_id: p.payment_id.clone(),
                user_id: p.user_id.clone(),
                status: p.payment_status.as_str().into(),
                event_id: Some(format!("payment:{}", p.payment_id)),
                amount: Some(p.amount),
                currency: Some(p.currency.clone()),
                reason: p.detail.clone(),
                occurred_at: Some(occurred_at.clone()),
                payment_id: Some(p.payment_id.clone()),
                kind: Some(format!("{:?}", p.kind).to_lowercase()),
                ..TransactionEvent::default()
            }
            .to_outgoing(topic)
        })
        .collect();
    let acks = produce_each(producer, &events).await;
    let mut pipe = redis::pipe();
    for (payment, ack) in queued.iter().zip(&acks) {
        match ack {
            Ok(()) => {
                pipe.srem(keys::UNANNOUNCED, &payment.payment_id);
                summary.announced += 1;
            }
            Err(e) => {
                tracing::warn!(payment = %payment.payment_id, "outcome event not sent, will retry: {e:#}")
            }
        }
    }
    let _: Vec<i64> = run_pipeline(&pipe, redis)
        .await
        .context("updating the announce queue")?;
    Ok(())
}

/// One payment through the processor, retrying passing failures with backoff.
async fn call(
    processor: &Processor,
    payment: &Payment,
    retries: u32,
    shutdown: &CancellationToken,
) -> Option<Answer> {
    let mut backoff = Duration::from_millis(200);
    for attempt in 0..=retries {
        if shutdown.is_cancelled() {
            return None;
        }
        match processor.execute(payment).await {
            Ok(answer) => return Some(answer),
            Err(e) => tracing::warn!(payment = %payment.payment_id, attempt, "no answer: {e:#}"),
        }
        if attempt < retries {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    None
}

/// Step 3 and the storing half of 4.
async fn send_to_processor(
    redis: &mut Redis,
    processor: &Processor,
    args: &Args,
    summary: &mut ProcessSummary,
    progress: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<u64> {
    let waiting = members(redis, &keys::by_status(ProcessingStatus::InProcessing)).await?;
    if waiting.is_empty() {
        return Ok(0);
    }
    let bar = output::progress_bar(waiting.len() as u64, progress);
    let answers: Vec<(Payment, Option<Answer>)> = futures::stream::iter(waiting)
        .map(|payment| {
            let bar = bar.clone();
            async move {
                let answer = call(processor, &payment, args.retries, shutdown).await;
                bar.inc(1);
                (payment, answer)
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();

    let now = crate::clock::now_rfc3339();
    let mut pipe = redis::pipe();
    let mut stored = Vec::new();
    for (payment, answer) in answers {
        let Some(answer) = answer else {
            summary.unanswered += 1;
            continue;
        };
        let next = Payment {
            processing_status: ProcessingStatus::Processed,
            payment_status: answer.status,
            detail: answer.detail,
            updated_at: now.clone(),
            ..payment
        };
        pipe.add_command(transition(&next, ProcessingStatus::InProcessing, true)?);
        stored.push(answer.status);
    }
    let moved: Vec<i64> = run_pipeline(&pipe, redis)
        .await
        .context("storing processor answers")?;
    let mut answered = 0;
    for (status, moved) in stored.into_iter().zip(moved) {
        if moved == 1 {
            *summary.answered.entry(status.as_str()).or_default() += 1;
            answered += 1;
        }
    }
    Ok(answered)
}

fn processor(args: &Args) -> anyhow::Result<Processor> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    Ok(match &args.processor_url {
        Some(url) => Processor::Http(HttpProcessor::new(url, timeout)?),
        None => Processor::Simulator(Simulator::new(
            args.seed,
            args.accept_rate,
            args.decline_rate
                .unwrap_or((1.0 - args.accept_rate).clamp(0.0, 0.1)),
            Duration::from_millis(args.latency_ms),
        )?),
    })
}

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    output: Output,
    progress: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let processor = processor(&args)?;
    let until_idle = match args.until_idle {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(secs) => bail!("--until-idle must be a number of seconds, got {secs}"),
        None => None,
    };
    for script in [&*TRANSITION, &*TAKE_LOCK, &*RELEASE_LOCK] {
        script.load(redis).await?;
    }
    let lock = uuid::Uuid::new_v4().to_string();
    take_lock(redis, &lock).await?;
    // Keep the lock for as long as the run takes, however long a pass is.
    let renewer = {
        let (mut redis, lock) = (redis.clone(), lock.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(LOCK_SECS / 4)).await;
                if let Err(e) = take_lock(&mut redis, &lock).await {
                    tracing::error!("renewing the process lock: {e:#}");
                }
            }
        })
    };
    let started = Instant::now();
    let mut summary = ProcessSummary {
        answered: PaymentStatus::ALL[..3]
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect(),
        ..ProcessSummary::default()
    };
    let passes = async {
        let mut last_work = Instant::now();
        loop {
            announce(redis, producer, topic, &mut summary).await?;
            let before = summary.claimed;
            claim(redis, &mut summary).await?;
            summary.unanswered = 0;
            let answered =
                send_to_processor(redis, &processor, &args, &mut summary, progress, &shutdown)
                    .await?;
            announce(redis, producer, topic, &mut summary).await?;
            if summary.claimed > before || answered > 0 {
                last_work = Instant::now();
            }
            let Some(idle) = until_idle else { break };
            if last_work.elapsed() >= idle || shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        anyhow::Ok(())
    };
    let result = passes.await;
    renewer.abort();
    // Released whatever happened, so the next run does not wait for expiry.
    let released: redis::RedisResult<i64> = RELEASE_LOCK
        .invocation()
        .key(LOCK_KEY)
        .arg(&lock)
        .invoke_async(redis)
        .await;
    if let Err(e) = released {
        tracing::warn!("releasing the process lock (it expires within {LOCK_SECS}s): {e}");
    }
    result?;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    output.emit(&summary)
}

/// One `payments process` at a time: the lock is taken if free, renewed if ours.
async fn take_lock(redis: &mut Redis, lock: &str) -> anyhow::Result<()> {
    let taken: i64 = TAKE_LOCK
        .invocation()
        .key(LOCK_KEY)
        .arg(lock)
        .arg(LOCK_SECS)
        .invoke_async(redis)
        .await
        .context("taking the process lock")?;
    if taken == 0 {
        bail!("another `payments process` is running (Redis key {LOCK_KEY}, expires within {LOCK_SECS}s)");
    }
    Ok(())
}

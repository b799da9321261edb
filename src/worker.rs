//! The one consume–apply–produce–commit cycle every payctl worker shares.
//!
//! At-least-once with idempotent effects, in batches:
//! 1. wait for a message (the only place a shutdown or idle timeout can
//!    interrupt a wait), then take whatever else is ready, up to the bound;
//! 2. hand the batch to the worker's [`BatchHandler`], which applies it to
//!    Redis in one pipelined round trip and says what to produce;
//! 3. hand those records (outcome events, dead letters) to the producer;
//! 4. once every one of them is acknowledged, store the batch's offsets
//!    (committed by librdkafka, and once more, synchronously, on the way out).
//!
//! While batch N waits for its acks (4), batch N+1 is applied to Redis (2),
//! so Redis and the broker work at the same time. Batch N+1's records are
//! handed over (3) only once batch N's are acknowledged, so events keep
//! their order, and offsets are stored in batch order.
//!
//! A failure in 2 or 3 (Redis down, broker down) is passing: the same batch
//! is offered again after a backoff and nothing is committed meanwhile; a
//! record that is not acknowledged in 4 gets its whole batch applied and
//! produced again. The handler must therefore make re-applying a batch
//! change nothing twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Topics, WorkerLimits};
use crate::kafka::{enqueue, Acks, Outgoing};
use crate::output::{self, Rendered, Report};

/// One consumed message, detached from the consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

impl Delivery {
    fn from_message(message: &BorrowedMessage<'_>) -> Delivery {
        Delivery {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    /// `topic/partition@offset`, for log lines.
    pub fn origin(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// What became of one message: a label for the summary and what to produce.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The summary's name for this outcome (`completed`, `conflict`, …).
    pub outcome: &'static str,
    /// Records to produce before the message's offset is stored.
    pub records: Vec<Outgoing>,
}

/// The summary label of dead-lettered messages.
pub const DEAD_LETTERED: &str = "dead-lettered";

impl Verdict {
    /// An outcome that produces `records`.
    pub fn new(outcome: &'static str, records: Vec<Outgoing>) -> Verdict {
        Verdict { outcome, records }
    }

    /// A message that can never be processed: it goes to `<topic>.dlq` with
    /// the reason and its origin, and the worker moves on.
    pub fn dead_letter(delivery: &Delivery, reason: impl Into<String>) -> Verdict {
        let reason = reason.into();
        tracing::warn!(origin = %delivery.origin(), %reason, "dead-lettering message");
        let letter = DeadLetter {
            reason,
            origin: Origin {
                topic: &delivery.topic,
                partition: delivery.partition,
                offset: delivery.offset,
                timestamp_ms: delivery.timestamp_ms,
                key: delivery.key.as_deref().map(String::from_utf8_lossy),
            },
            payload: String::from_utf8_lossy(&delivery.payload),
            failed_at: crate::clock::now_rfc3339(),
        };
        Verdict::new(
            DEAD_LETTERED,
            vec![Outgoing {
                topic: Topics::dlq(&delivery.topic),
                key: delivery
                    .key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: serde_json::to_vec(&letter).expect("a dead letter serializes"),
                headers: Vec::new(),
            }],
        )
    }
}

/// The value written to a dead-letter topic.
#[derive(Serialize)]
struct DeadLetter<'a> {
    reason: String,
    origin: Origin<'a>,
    /// The original value, as text (invalid UTF-8 replaced).
    payload: std::borrow::Cow<'a, str>,
    failed_at: String,
}

#[derive(Serialize)]
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<std::borrow::Cow<'a, str>>,
}

/// A worker's domain logic: apply a batch, say what became of each message.
#[allow(async_fn_in_trait)]
pub trait BatchHandler {
    /// Gets ready to apply batches (loads Lua scripts, say). Called before
    /// the first batch and again before retrying a failed one: a restarted
    /// Redis has forgotten its scripts.
    async fn prepare(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Applies `batch` in order and returns one verdict per message.
    ///
    /// An `Err` is a passing failure: the batch is offered again later, so
    /// applying it twice must change nothing twice.
    async fn apply(&mut self, batch: &[Delivery]) -> anyhow::Result<Vec<Verdict>>;
}

/// What a worker consumes and where.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Consumer group; run more workers in the same group to scale out.
    pub group: String,
    /// Topics consumed.
    pub inputs: Vec<String>,
    /// Topics the handler produces to (checked at start).
    pub outputs: Vec<String>,
    /// Outcome labels the summary always shows, even at zero.
    pub outcomes: &'static [&'static str],
    pub limits: WorkerLimits,
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// SIGINT or SIGTERM.
    Signal,
    /// `--max-messages` reached.
    MaxMessages,
    /// `--until-idle` elapsed with nothing to read.
    Idle,
}

/// What a worker did, printed when it stops.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSummary {
    pub group: String,
    pub processed: u64,
    /// Counts by outcome label.
    pub outcomes: BTreeMap<&'static str, u64>,
    pub stopped: StopReason,
    /// Messages read but left uncommitted (interrupted while retrying): they
    /// will be delivered again.
    pub uncommitted: u64,
    pub elapsed_ms: u64,
    /// From the first message received to the last batch committed: the
    /// time spent working, without group joins and idle waits.
    pub active_ms: u64,
}

impl WorkerSummary {
    /// How many messages had `outcome`.
    pub fn count(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }
}

impl Report for WorkerSummary {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("group", self.group.clone()),
            ("processed", self.processed.to_string()),
        ];
        rows.extend(self.outcomes.iter().map(|(k, v)| (*k, v.to_string())));
        if self.uncommitted > 0 {
            rows.push(("uncommitted", self.uncommitted.to_string()));
        }
        rows.push(("stopped", format!("{:?}", self.stopped).to_lowercase()));
        rows.push(("seconds", format!("{:.2}", self.elapsed_ms as f64 / 1000.0)));
        if self.active_ms > 0 {
            let rate = self.processed as f64 * 1000.0 / self.active_ms as f64;
            rows.push(("per second (active)", format!("{rate:.0}")));
        }
        Rendered::Table(output::record_table(rows))
    }
}

/// The flags every worker shares.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Stop after this many messages.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Stop after this many seconds without a message (a batch job).
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<f64>,
    /// Most messages applied in one Redis round trip.
    #[arg(long, default_value_t = WorkerLimits::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

impl WorkerArgs {
    /// The validated limits.
    pub fn limits(&self) -> anyhow::Result<WorkerLimits> {
        let until_idle = match self.until_idle {
            Some(secs) if !(secs.is_finite() && secs >= 0.0) => {
                anyhow::bail!("--until-idle must be a number of seconds, got {secs}")
            }
            Some(secs) => Some(std::time::Duration::from_secs_f64(secs)),
            None => None,
        };
        anyhow::ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        Ok(WorkerLimits {
            max_messages: self.max_messages,
            until_idle,
            batch_size: self.batch_size,
        })
    }
}

/// Notes partition assignment, so idle time counts only once the group has
/// given this worker something to read.
struct GroupContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                self.assigned.store(true, Ordering::SeqCst);
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }
}

/// How long a worker waits for its first partition assignment before it
/// calls the group broken.
const ASSIGNMENT_WAIT: Duration = Duration::from_secs(60);
/// How often the wait for input wakes to check the idle deadline.
const TICK: Duration = Duration::from_millis(100);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Runs the cycle until a signal, `--max-messages` or `--until-idle`.
pub async fn run<H: BatchHandler>(
    kafka: &KafkaConfig,
    spec: &WorkerSpec,
    handler: &mut H,
    shutdown: CancellationToken,
) -> anyhow::Result<WorkerSummary> {
    let assigned = Arc::new(AtomicBool::new(false));
    let consumer: StreamConsumer<GroupContext> = kafka.consumer(
        &spec.group,
        GroupContext {
            assigned: assigned.clone(),
        },
    )?;
    check_topics_exist(&consumer, spec)?;
    let inputs: Vec<&str> = spec.inputs.iter().map(String::as_str).collect();
    consumer
        .subscribe(&inputs)
        .with_context(|| format!("subscribing to {}", spec.inputs.join(", ")))?;
    let producer = kafka.ordered_producer()?;
    handler.prepare().await?;
    tracing::info!(group = %spec.group, topics = %spec.inputs.join(","), "worker started");

    let started = Instant::now();
    let mut summary = WorkerSummary {
        group: spec.group.clone(),
        processed: 0,
        outcomes: spec.outcomes.iter().map(|o| (*o, 0)).collect(),
        stopped: StopReason::Signal,
        uncommitted: 0,
        elapsed_ms: 0,
        active_ms: 0,
    };
    let mut last_input: Option<Instant> = None;
    let batch_size = spec.limits.batch_size.max(1);
    let mut cycle = Cycle {
        consumer: &consumer,
        producer: &producer,
        handler,
        shutdown: &shutdown,
        first_input: None,
    };
    // One batch may wait for its acks while the next is applied: Redis and
    // the broker work at the same time, and offsets are still stored in order.
    let mut in_flight: Option<InFlight> = None;

    'consume: loop {
        // Between batches, a stop request is honoured even while input keeps coming.
        if shutdown.is_cancelled() {
            summary.stopped = StopReason::Signal;
            break;
        }
        let taken = summary.processed + in_flight.as_ref().map_or(0, |f| f.batch.len() as u64);
        let remaining = match spec.limits.max_messages {
            Some(max) if taken >= max => {
                summary.stopped = StopReason::MaxMessages;
                break;
            }
            Some(max) => (max - taken) as usize,
            None => usize::MAX,
        };
        let bound = batch_size.min(remaining);

        let mut batch = Vec::new();
        if in_flight.is_some() {
            // Something is in flight: take only what is ready, or finish it.
            take_ready(&consumer, &mut batch, bound);
            if batch.is_empty() {
                if !cycle.finish(in_flight.take(), &mut summary).await {
                    break 'consume;
                }
                continue;
            }
        } else {
            // 1. Wait for input: the only place where a stop request is
            //    honoured without finishing the work in hand.
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    summary.stopped = StopReason::Signal;
                    break;
                }
                received = consumer.recv() => received,
                _ = tokio::time::sleep(TICK) => {
                    if assigned.load(Ordering::SeqCst) {
                        let since = *last_input.get_or_insert_with(Instant::now);
                        if spec.limits.until_idle.is_some_and(|idle| since.elapsed() >= idle) {
                            summary.stopped = StopReason::Idle;
                            break;
                        }
                    } else if started.elapsed() > ASSIGNMENT_WAIT {
                        bail!(
                            "no partitions assigned to group {} after {}s: is the broker up and the group healthy?",
                            spec.group,
                            ASSIGNMENT_WAIT.as_secs()
                        );
                    }
                    continue;
                }
            };
            match first {
                Ok(message) => batch.push(Delivery::from_message(&message)),
                Err(e) => {
                    log_consumer_error(&e);
                    continue;
                }
            }
            take_ready(&consumer, &mut batch, bound);
        }
        cycle.first_input.get_or_insert_with(Instant::now);

        // 2. Apply to Redis (retrying a passing failure) while the previous
        //    batch's acks arrive.
        let Some(applied) = cycle.apply(batch, &mut summary).await else {
            break 'consume;
        };
        // 4. The previous batch's acks, then its offsets; only then
        // 3. this batch's records, so events keep their order.
        if !cycle.finish(in_flight.take(), &mut summary).await {
            summary.uncommitted += applied.batch.len() as u64;
            break 'consume;
        }
        in_flight = Some(cycle.send(applied).await);
        last_input = Some(Instant::now());
    }
    cycle.finish(in_flight.take(), &mut summary).await;

    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!("final commit failed (stored offsets are committed later): {e}"),
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(processed = summary.processed, "worker stopped");
    Ok(summary)
}

/// A batch whose effects are in Redis; its records are not handed over yet.
struct Applied {
    batch: Vec<Delivery>,
    verdicts: Vec<Verdict>,
}

/// A batch whose records are on their way to the broker.
struct InFlight {
    batch: Vec<Delivery>,
    verdicts: Vec<Verdict>,
    acks: anyhow::Result<Acks>,
}

/// What one turn of the cycle needs.
struct Cycle<'a, H> {
    consumer: &'a StreamConsumer<GroupContext>,
    producer: &'a FutureProducer,
    handler: &'a mut H,
    shutdown: &'a CancellationToken,
    /// When the first message came: the start of active time.
    first_input: Option<Instant>,
}

impl<H: BatchHandler> Cycle<'_, H> {
    /// Applies a batch to Redis, retrying a passing failure with backoff.
    /// `None`: interrupted while retrying (the batch stays uncommitted and
    /// will be delivered again).
    async fn apply(
        &mut self,
        batch: Vec<Delivery>,
        summary: &mut WorkerSummary,
    ) -> Option<Applied> {
        tracing::debug!(size = batch.len(), "applying a batch");
        let mut backoff = FIRST_BACKOFF;
        let mut retrying = false;
        loop {
            let attempt = async {
                if retrying {
                    self.handler.prepare().await?;
                }
                let verdicts = self.handler.apply(&batch).await?;
                anyhow::ensure!(
                    verdicts.len() == batch.len(),
                    "handler returned {} verdicts for {} messages",
                    verdicts.len(),
                    batch.len()
                );
                anyhow::Ok(verdicts)
            };
            match attempt.await {
                Ok(verdicts) => return Some(Applied { batch, verdicts }),
                Err(e) => {
                    retrying = true;
                    tracing::warn!(
                        "batch of {} not applied, retrying in {backoff:?}: {e:#}",
                        batch.len()
                    );
                    if !self.pause(backoff, batch.len(), summary).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands an applied batch's records to the producer.
    async fn send(&self, applied: Applied) -> InFlight {
        let records: Vec<Outgoing> = applied
            .verdicts
            .iter()
            .flat_map(|v| v.records.iter().cloned())
            .collect();
        InFlight {
            acks: enqueue(self.producer, &records).await,
            batch: applied.batch,
            verdicts: applied.verdicts,
        }
    }

    /// Waits for a batch's acks, then stores its offsets and counts it. If
    /// a record was not acknowledged, the whole batch is applied and
    /// produced again (applying twice changes nothing twice) before anything
    /// later is produced. `false`: interrupted while retrying.
    async fn finish(&mut self, in_flight: Option<InFlight>, summary: &mut WorkerSummary) -> bool {
        let Some(InFlight {
            batch,
            mut verdicts,
            acks,
        }) = in_flight
        else {
            return true;
        };
        let mut acked = match acks {
            Ok(acks) => acks.wait().await,
            Err(e) => Err(e),
        };
        let mut backoff = FIRST_BACKOFF;
        while let Err(e) = acked {
            tracing::warn!(
                "batch of {}: records not acknowledged, applying again: {e:#}",
                batch.len()
            );
            if !self.pause(backoff, batch.len(), summary).await {
                return false;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let Some(again) = self.apply(batch.clone(), summary).await else {
                return false;
            };
            let again = self.send(again).await;
            verdicts = again.verdicts;
            acked = match again.acks {
                Ok(acks) => acks.wait().await,
                Err(e) => Err(e),
            };
        }
        // Every effect is durable and every record acknowledged.
        store_offsets(self.consumer, &batch);
        summary.processed += batch.len() as u64;
        for verdict in &verdicts {
            *summary.outcomes.entry(verdict.outcome).or_default() += 1;
        }
        if let Some(first) = self.first_input {
            summary.active_ms = first.elapsed().as_millis() as u64;
        }
        true
    }

    /// Sleeps before a retry. `false`: a stop was asked for meanwhile; the
    /// batch is left uncommitted.
    async fn pause(&self, backoff: Duration, size: usize, summary: &mut WorkerSummary) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => {
                summary.uncommitted += size as u64;
                summary.stopped = StopReason::Signal;
                false
            }
            _ = tokio::time::sleep(backoff) => true,
        }
    }
}

/// Adds the messages that are ready now, without waiting, up to `bound`.
fn take_ready(consumer: &StreamConsumer<GroupContext>, batch: &mut Vec<Delivery>, bound: usize) {
    while batch.len() < bound {
        match consumer.recv().now_or_never() {
            Some(Ok(message)) => batch.push(Delivery::from_message(&message)),
            Some(Err(e)) => {
                log_consumer_error(&e);
                break;
            }
            None => break,
        }
    }
}

/// Stores the next offset of every partition in the batch. Messages of one
/// partition arrive in order, so the last one seen is the highest.
fn store_offsets<C: ConsumerContext>(consumer: &StreamConsumer<C>, batch: &[Delivery]) {
    let mut last: HashMap<(&str, i32), i64> = HashMap::new();
    for delivery in batch {
        last.insert((&delivery.topic, delivery.partition), delivery.offset);
    }
    for ((topic, partition), offset) in last {
        // librdkafka stores offset + 1: the next message to read.
        if let Err(e) = consumer.store_offset(topic, partition, offset) {
            tracing::warn!("storing offset {topic}/{partition}@{offset} (partition moved?): {e}");
        }
    }
}

fn log_consumer_error(e: &KafkaError) {
    tracing::warn!("consumer: {e}");
}

/// Fails fast, with the fix, when a topic the worker needs is missing
/// (brokers such as Tansu create none on first use).
fn check_topics_exist<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    spec: &WorkerSpec,
) -> anyhow::Result<()> {
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("reading topic metadata from the broker")?;
    let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let needed = spec
        .inputs
        .iter()
        .flat_map(|t| [t.clone(), Topics::dlq(t)])
        .chain(spec.outputs.iter().cloned());
    let missing: Vec<String> = needed.filter(|t| !existing.contains(&t.as_str())).collect();
    if !missing.is_empty() {
        bail!(
            "missing topics: {} (create them: payctl topics create {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

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
//! so Redis and the broker work at the same time; and while batch N+1 is in
//! Redis, the messages already fetched for batch N+2 are decoded
//! ([`BatchHandler::decoder`]), so payctl and Redis work at the same time. Batch N+1's records are
//! handed over (3) only once batch N's are acknowledged, so events keep
//! their order, and offsets are stored in batch order.
//!
//! A failure in 2 or 3 (Redis down, broker down) is passing: the same batch
//! is offered again after a backoff and nothing is committed meanwhile; a
//! record that is not acknowledged in 4 gets its whole batch applied and
//! produced again. The handler must therefore make re-applying a batch
//! change nothing twice.

use std::collections::{BTreeMap, HashMap};
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
use crate::failure::{classify, Class, FatalError};
use crate::kafka::{
    enqueue, is_undecodable, locate_undecodable, Acks, AuthFailed, Membership, Outgoing, Refusals,
    DIAGNOSE_TIMEOUT,
};
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
    /// The message's Kafka headers (text; invalid UTF-8 replaced), kept on
    /// its dead letter so that `dlq redrive` can send them back.
    pub headers: Vec<(String, String)>,
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
            headers: message
                .headers()
                .map(|headers| {
                    use rdkafka::message::Headers as _;
                    headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
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
    /// Why the message was dead-lettered, for a dead letter.
    pub reason: Option<String>,
}

/// The summary label of dead-lettered messages.
pub const DEAD_LETTERED: &str = "dead-lettered";

/// The largest dead letter payctl produces, in bytes: well under the 1 MB
/// that brokers (`message.max.bytes`) and librdkafka accept by default. A
/// longer original payload is cut to fit.
pub const MAX_DEAD_LETTER_BYTES: usize = 512 * 1024;
/// Longest reason and key kept in a dead letter.
const MAX_REASON_BYTES: usize = 2048;
const MAX_KEY_BYTES: usize = 1024;

impl Verdict {
    /// An outcome that produces `records`.
    pub fn new(outcome: &'static str, records: Vec<Outgoing>) -> Verdict {
        Verdict {
            outcome,
            records,
            reason: None,
        }
    }

    /// A message that can never be processed: it goes to `<topic>.dlq` with
    /// the reason and its origin, and the worker moves on.
    pub fn dead_letter(delivery: &Delivery, reason: impl Into<String>) -> Verdict {
        let reason = reason.into();
        tracing::warn!(origin = %delivery.origin(), %reason, "dead-lettering message");
        let record = dead_letter_record(delivery, &reason, MAX_DEAD_LETTER_BYTES);
        Verdict {
            outcome: DEAD_LETTERED,
            records: vec![record],
            reason: Some(reason),
        }
    }
}

/// The record for `<topic>.dlq`: the reason, the origin, and as much of the
/// original payload as fits in `limit` bytes (none at all with a limit of 0).
fn dead_letter_record(delivery: &Delivery, reason: &str, limit: usize) -> Outgoing {
    let text = String::from_utf8_lossy(&delivery.payload);
    let key = delivery
        .key
        .as_deref()
        .map(|k| prefix_fitting(&String::from_utf8_lossy(k), MAX_KEY_BYTES).to_string());
    let mut letter = DeadLetter {
        reason: prefix_fitting(reason, MAX_REASON_BYTES),
        origin: Origin {
            topic: &delivery.topic,
            partition: delivery.partition,
            offset: delivery.offset,
            timestamp_ms: delivery.timestamp_ms,
            key: key.as_deref(),
        },
        payload: &text,
        payload_truncated: false,
        payload_bytes: delivery.payload.len(),
        failed_at: crate::clock::now_rfc3339(),
    };
    let mut json = serde_json::to_vec(&letter).expect("a dead letter serializes");
    if json.len() > limit {
        // What the letter takes besides the payload, then the longest
        // prefix of the payload whose escaped form fits beside it.
        let escaped = escaped_len(&text) + 2;
        let rest = json.len() - escaped + 2;
        letter.payload = prefix_fitting(&text, limit.saturating_sub(rest));
        letter.payload_truncated = true;
        json = serde_json::to_vec(&letter).expect("a dead letter serializes");
    }
    Outgoing {
        topic: Topics::dlq(&delivery.topic),
        key,
        payload: json,
        // The original's headers, within the letter's size limit.
        headers: headers_fitting(&delivery.headers, limit / 4),
    }
}

/// The leading headers whose keys and values take at most `budget` bytes.
fn headers_fitting(headers: &[(String, String)], budget: usize) -> Vec<(String, String)> {
    let mut used = 0;
    headers
        .iter()
        .take_while(|(key, value)| {
            used += key.len() + value.len();
            used <= budget
        })
        .cloned()
        .collect()
}

/// Bytes `c` takes inside a JSON string.
fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn escaped_len(text: &str) -> usize {
    text.chars().map(escaped_char_len).sum()
}

/// The longest prefix of `text` whose JSON-escaped form takes at most `budget` bytes.
fn prefix_fitting(text: &str, budget: usize) -> &str {
    let mut used = 0;
    for (at, c) in text.char_indices() {
        used += escaped_char_len(c);
        if used > budget {
            return &text[..at];
        }
    }
    text
}

/// The value written to a dead-letter topic.
#[derive(Serialize)]
struct DeadLetter<'a> {
    reason: &'a str,
    origin: Origin<'a>,
    /// The original value, as text (invalid UTF-8 replaced), cut to fit.
    payload: &'a str,
    /// True when `payload` is only the start of the original.
    payload_truncated: bool,
    /// The original value's length in bytes.
    payload_bytes: usize,
    failed_at: String,
}

#[derive(Serialize)]
struct Origin<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<&'a str>,
}

/// Decodes a batch, one value per message, from the messages' bytes
/// alone: see [`BatchHandler::decoder`].
pub type Decoder<D> = Arc<dyn Fn(&[Delivery]) -> Vec<D> + Send + Sync>;

/// The decoder of a handler that does all its work in `apply`.
pub fn no_decoding() -> Decoder<()> {
    Arc::new(|batch| vec![(); batch.len()])
}

/// A worker's domain logic: apply a batch, say what became of each message.
#[allow(async_fn_in_trait)]
pub trait BatchHandler {
    /// What a message is once decoded, before it meets Redis.
    type Decoded;

    /// Decodes messages from their bytes alone (one value per message, in
    /// order): no Redis, and nothing that `apply` changes. The worker decodes the next batch while the current
    /// one is applied (the CPU works while Redis does), so per-message
    /// parsing and formatting belong here. Decoding the same bytes twice
    /// must give the same answer: a retried batch keeps its decoded form.
    fn decoder(&self) -> Decoder<Self::Decoded>;

    /// Gets ready to apply batches (loads Lua scripts, say). Called before
    /// the first batch and again before retrying a failed one: a restarted
    /// Redis has forgotten its scripts.
    async fn prepare(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Applies `batch` in order and returns one verdict per message;
    /// `decoded[i]` is what the decoder made of `batch[i]`.
    ///
    /// An `Err` is classified ([`crate::failure`]): a passing one offers the
    /// batch again later, so applying it twice must change nothing twice.
    async fn apply(
        &mut self,
        batch: &[Delivery],
        decoded: &[Self::Decoded],
    ) -> anyhow::Result<Vec<Verdict>>;

    /// Called once every record `batch` produced is acknowledged, before its
    /// offsets are stored: a handler may note that in Redis (say, so that a
    /// redelivery need not announce again). A failure here is only logged:
    /// not noting it must be safe.
    async fn acknowledged(&mut self, _batch: &[Delivery]) -> anyhow::Result<()> {
        Ok(())
    }
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
    /// The Redis the handler writes to: `/readyz` pings it.
    pub redis: Option<crate::store::Redis>,
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
    /// Serve Prometheus metrics at http://ADDR/metrics, with /healthz and
    /// /readyz, while the worker runs.
    #[arg(long, value_name = "ADDR", env = "PAYCTL_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl WorkerArgs {
    /// The validated limits.
    pub fn limits(&self) -> anyhow::Result<WorkerLimits> {
        let until_idle = self
            .until_idle
            .map(|secs| crate::config::seconds("--until-idle", secs))
            .transpose()?;
        anyhow::ensure!(
            (1..=WorkerLimits::MAX_BATCH_SIZE).contains(&self.batch_size),
            "--batch-size must be between 1 and {}, got {}",
            WorkerLimits::MAX_BATCH_SIZE,
            self.batch_size
        );
        Ok(WorkerLimits {
            max_messages: self.max_messages,
            until_idle,
            batch_size: self.batch_size,
            metrics_listen: self.metrics_listen,
        })
    }
}

/// Notes partition assignment, so idle time counts only once the group has
/// given this worker something to read.
struct GroupContext {
    membership: Membership,
    /// Brokers refusing the worker (credentials, certificate): fatal.
    refusals: Refusals,
}

impl ClientContext for GroupContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::info!(target: "librdkafka", ?level, "{fac}: {message}");
        self.refusals.observe_log(fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        self.refusals
            .observe_error(error.rdkafka_error_code(), reason);
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                self.membership.note_assigned();
                crate::metrics::worker()
                    .assigned
                    .set(i64::from(partitions.count() > 0));
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(partitions = partitions.count(), "partitions revoked");
                crate::metrics::worker().assigned.set(0);
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

/// Runs the cycle until a signal, `--max-messages` or `--until-idle`, or a
/// fatal error (returned after committing what was finished).
pub async fn run<H: BatchHandler>(
    kafka: &KafkaConfig,
    spec: &WorkerSpec,
    handler: &mut H,
    shutdown: CancellationToken,
) -> anyhow::Result<WorkerSummary> {
    let membership = Membership::default();
    let consumer: StreamConsumer<GroupContext> = kafka.consumer(
        &spec.group,
        GroupContext {
            membership: membership.clone(),
            refusals: Refusals::default(),
        },
    )?;
    check_topics_exist(&consumer, spec)?;
    let inputs: Vec<&str> = spec.inputs.iter().map(String::as_str).collect();
    consumer
        .subscribe(&inputs)
        .with_context(|| format!("subscribing to {}", spec.inputs.join(", ")))?;
    let metrics = match spec.limits.metrics_listen {
        Some(address) => {
            let stop = shutdown.child_token();
            let probe = crate::metrics::Probe {
                redis: spec.redis.clone(),
                kafka: kafka.clone(),
                group: spec.group.clone(),
                topics: spec.inputs.clone(),
            };
            let server = tokio::spawn(crate::metrics::serve(address, probe, stop.clone()));
            Some((server, stop))
        }
        None => None,
    };
    // Every way out, errors included, leaves the group cleanly.
    let result = consume(kafka, spec, handler, shutdown, &consumer, &membership).await;
    if let Some((server, stop)) = metrics {
        stop.cancel();
        match server.await {
            Ok(Err(e)) => tracing::warn!("{e:#}"),
            Err(e) => tracing::warn!("the metrics server: {e}"),
            Ok(Ok(())) => {}
        }
    }
    crate::kafka::leave_group(kafka, &consumer, &membership).await;
    match result {
        Ok(summary) => Ok(summary),
        Err(e) => Err(kafka.name_auth_failure(e, DIAGNOSE_TIMEOUT).await),
    }
}

/// The cycle itself, on a subscribed consumer.
async fn consume<H: BatchHandler>(
    kafka: &KafkaConfig,
    spec: &WorkerSpec,
    handler: &mut H,
    shutdown: CancellationToken,
    consumer: &StreamConsumer<GroupContext>,
    membership: &Membership,
) -> anyhow::Result<WorkerSummary> {
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
        kafka,
        consumer,
        producer: &producer,
        handler,
        shutdown: &shutdown,
        spec,
        first_input: None,
    };
    // One batch may wait for its acks while the next is applied: Redis and
    // the broker work at the same time, and offsets are still stored in order.
    let mut in_flight: Option<InFlight<H::Decoded>> = None;
    // The batch after the one being applied, read and decoded meanwhile.
    let mut ahead: Option<Ahead<H::Decoded>> = None;
    let decoder = cycle.handler.decoder();
    let mut fatal: Option<anyhow::Error> = None;

    'consume: loop {
        // Between batches, a stop request is honoured even while input keeps coming.
        if shutdown.is_cancelled() {
            summary.stopped = StopReason::Signal;
            break;
        }
        // A batch read ahead is within the bound: it was read with what
        // remained after the batch before it.
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
        let mut decoded = Vec::new();
        let taking = if let Some(next) = ahead.take() {
            batch = next.batch;
            decoded = next.decoded;
            next.taking
        } else if in_flight.is_some() {
            // Something is in flight: take only what is ready, or finish it.
            let taking = cycle.take_ready(&mut batch, bound);
            if taking.is_ok() && batch.is_empty() {
                match cycle.finish(in_flight.take(), &mut summary).await {
                    Ok(()) => continue,
                    Err(stop) => {
                        fatal = stop.into_fatal();
                        break 'consume;
                    }
                }
            }
            taking
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
                    // librdkafka may report a refusal only to the error
                    // callback and log, and go on reconnecting in silence.
                    if let Some(reason) = consumer.context().refusals.reason() {
                        fatal = Some(anyhow::Error::new(AuthFailed(kafka.redact(&reason))));
                        break 'consume;
                    }
                    if membership.assigned() {
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
                Ok(message) => {
                    batch.push(Delivery::from_message(&message));
                    cycle.take_ready(&mut batch, bound)
                }
                Err(e) => cycle.consumer_error(e),
            }
        };
        if let Err(stop) = taking {
            // A fatal consumer error: finish what is in hand, then stop.
            fatal = stop.into_fatal();
            if let Err(stop) = cycle.finish(in_flight.take(), &mut summary).await {
                fatal = fatal.or(stop.into_fatal());
            }
            summary.uncommitted += batch.len() as u64;
            break 'consume;
        }
        if batch.is_empty() {
            continue;
        }
        cycle.first_input.get_or_insert_with(Instant::now);
        if decoded.len() != batch.len() {
            decoded = decoder(&batch);
        }

        // 2. Apply to Redis (retrying a passing failure) while the previous
        //    batch's acks arrive, and read and decode the next batch while
        //    Redis works.
        let next_bound = batch_size.min(remaining - batch.len());
        let (applied, next) = tokio::join!(
            cycle.apply(batch, decoded, &mut summary),
            read_ahead(consumer, &decoder, next_bound),
        );
        let (next_batch, next_decoded, error) = next;
        if !next_batch.is_empty() || error.is_some() {
            ahead = Some(Ahead {
                taking: error.map_or(Ok(()), |e| cycle.consumer_error(e)),
                batch: next_batch,
                decoded: next_decoded,
            });
        }
        let applied = match applied {
            Ok(applied) => applied,
            Err(stop) => {
                fatal = stop.into_fatal();
                break 'consume;
            }
        };
        // 4. The previous batch's acks, then its offsets; only then
        // 3. this batch's records, so events keep their order.
        if let Err(stop) = cycle.finish(in_flight.take(), &mut summary).await {
            summary.uncommitted += applied.batch.len() as u64;
            fatal = stop.into_fatal();
            break 'consume;
        }
        in_flight = Some(cycle.send(applied).await);
        last_input = Some(Instant::now());
    }
    if let Err(stop) = cycle.finish(in_flight.take(), &mut summary).await {
        fatal = fatal.or(stop.into_fatal());
    }
    // A batch read ahead and never applied is like librdkafka's prefetch:
    // its offsets were never stored, so it is read again, and it is not
    // work left undone (`uncommitted`).
    drop(ahead);

    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!("final commit failed (stored offsets are committed later): {e}"),
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(processed = summary.processed, "worker stopped");
    if let Some(e) = fatal {
        return Err(e.context(format!(
            "worker stopped: {} messages done and committed, the rest stays on the topic",
            summary.processed
        )));
    }
    Ok(summary)
}

/// Why a turn of the cycle stopped short.
enum Stop {
    /// A stop was asked for while retrying; the batch stays uncommitted.
    Interrupted,
    /// The worker cannot go on.
    Fatal(anyhow::Error),
}

impl Stop {
    fn into_fatal(self) -> Option<anyhow::Error> {
        match self {
            Stop::Interrupted => None,
            Stop::Fatal(e) => Some(e),
        }
    }
}

/// Adds the messages that are ready now, without waiting, up to `bound`;
/// returns the consumer error that stopped it, if one did.
fn take_ready(
    consumer: &StreamConsumer<GroupContext>,
    batch: &mut Vec<Delivery>,
    bound: usize,
) -> Option<KafkaError> {
    while batch.len() < bound {
        match consumer.recv().now_or_never()? {
            Ok(message) => batch.push(Delivery::from_message(&message)),
            Err(e) => return Some(e),
        }
    }
    None
}

/// The next batch, read and decoded while the current one was applied.
struct Ahead<D> {
    batch: Vec<Delivery>,
    decoded: Vec<D>,
    /// A consumer error met while reading it.
    taking: Result<(), Stop>,
}

/// Takes the messages that are ready now, up to `bound`, without waiting,
/// and decodes them. Returns what it read and the consumer error, if any,
/// that stopped it.
async fn read_ahead<D>(
    consumer: &StreamConsumer<GroupContext>,
    decoder: &Decoder<D>,
    bound: usize,
) -> (Vec<Delivery>, Vec<D>, Option<KafkaError>) {
    let mut batch = Vec::new();
    let error = take_ready(consumer, &mut batch, bound);
    let decoded = if batch.is_empty() {
        Vec::new()
    } else {
        decoder(&batch)
    };
    (batch, decoded, error)
}

/// A batch whose effects are in Redis; its records are not handed over yet.
struct Applied<D> {
    batch: Vec<Delivery>,
    decoded: Vec<D>,
    verdicts: Vec<Verdict>,
}

/// A batch whose records are on their way to the broker.
struct InFlight<D> {
    batch: Vec<Delivery>,
    decoded: Vec<D>,
    verdicts: Vec<Verdict>,
    /// For each record handed over, the index of the message it belongs to.
    owners: Vec<usize>,
    acks: Acks,
}

/// What one turn of the cycle needs.
struct Cycle<'a, H> {
    kafka: &'a KafkaConfig,
    consumer: &'a StreamConsumer<GroupContext>,
    producer: &'a FutureProducer,
    handler: &'a mut H,
    shutdown: &'a CancellationToken,
    spec: &'a WorkerSpec,
    /// When the first message came: the start of active time.
    first_input: Option<Instant>,
}

impl<H: BatchHandler> Cycle<'_, H> {
    /// Applies a batch to Redis, retrying passing failures with backoff. If
    /// it fails for good, its messages are applied one at a time, and each
    /// one that still fails for good is dead-lettered with the error: one bad
    /// message never holds up its neighbours.
    async fn apply(
        &mut self,
        batch: Vec<Delivery>,
        decoded: Vec<H::Decoded>,
        summary: &mut WorkerSummary,
    ) -> Result<Applied<H::Decoded>, Stop> {
        tracing::debug!(size = batch.len(), "applying a batch");
        let error = match self.attempt(&batch, &decoded, summary).await? {
            Ok(verdicts) => {
                return Ok(Applied {
                    batch,
                    decoded,
                    verdicts,
                })
            }
            Err(error) => error,
        };
        if batch.len() > 1 {
            tracing::warn!(
                "batch of {} failed for good ({error:#}); applying its messages one at a time",
                batch.len()
            );
        }
        let mut verdicts = Vec::with_capacity(batch.len());
        for (delivery, decoded) in batch.iter().zip(&decoded) {
            let verdict = match self
                .attempt(
                    std::slice::from_ref(delivery),
                    std::slice::from_ref(decoded),
                    summary,
                )
                .await?
            {
                Ok(mut one) => one.pop().expect("one verdict for one message"),
                Err(error) => Verdict::dead_letter(delivery, format!("{error:#}")),
            };
            verdicts.push(verdict);
        }
        Ok(Applied {
            batch,
            decoded,
            verdicts,
        })
    }

    /// Applies `messages`, retrying passing failures. `Ok(Err)`: a
    /// permanent failure, for the caller to isolate.
    async fn attempt(
        &mut self,
        messages: &[Delivery],
        decoded: &[H::Decoded],
        summary: &mut WorkerSummary,
    ) -> Result<anyhow::Result<Vec<Verdict>>, Stop> {
        let mut backoff = FIRST_BACKOFF;
        let mut retrying = false;
        let started = Instant::now();
        loop {
            let attempt = async {
                if retrying {
                    self.handler.prepare().await?;
                }
                let verdicts = self.handler.apply(messages, decoded).await?;
                anyhow::ensure!(
                    verdicts.len() == messages.len(),
                    "handler returned {} verdicts for {} messages",
                    verdicts.len(),
                    messages.len()
                );
                anyhow::Ok(verdicts)
            };
            let error = match attempt.await {
                Ok(verdicts) => {
                    let metrics = crate::metrics::worker();
                    metrics.retrying.set(0);
                    metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(Ok(verdicts));
                }
                Err(error) => error,
            };
            match classify(&error) {
                Class::Permanent => return Ok(Err(error)),
                Class::Fatal => return Err(Stop::Fatal(error)),
                Class::Passing => {
                    retrying = true;
                    let metrics = crate::metrics::worker();
                    metrics.retrying.set(1);
                    let cause = crate::metrics::cause(&error);
                    metrics.retries.with_label_values(&[cause]).inc();
                    if cause == "redis" {
                        metrics.redis_errors.inc();
                    }
                    tracing::warn!(
                        "batch of {} not applied, retrying in {backoff:?}: {error:#}",
                        messages.len()
                    );
                    self.pause(backoff, messages.len(), summary).await?;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands an applied batch's records to the producer.
    async fn send(&self, applied: Applied<H::Decoded>) -> InFlight<H::Decoded> {
        let mut owners = Vec::new();
        let mut records = Vec::new();
        for (owner, verdict) in applied.verdicts.iter().enumerate() {
            for record in &verdict.records {
                owners.push(owner);
                records.push(record.clone());
            }
        }
        InFlight {
            acks: enqueue(self.producer, &records).await,
            batch: applied.batch,
            decoded: applied.decoded,
            verdicts: applied.verdicts,
            owners,
        }
    }

    /// Waits for a batch's acks, then stores its offsets and counts it.
    ///
    /// A record the broker will never take (too large, say) turns its
    /// message into a dead letter, which is produced instead; a dead letter
    /// refused that way is sent again without its payload. Any other
    /// failure is passing: the whole batch is applied and produced again
    /// (applying twice changes nothing twice) before anything later is
    /// produced.
    async fn finish(
        &mut self,
        in_flight: Option<InFlight<H::Decoded>>,
        summary: &mut WorkerSummary,
    ) -> Result<(), Stop> {
        let Some(InFlight {
            mut batch,
            mut decoded,
            mut verdicts,
            mut owners,
            mut acks,
        }) = in_flight
        else {
            return Ok(());
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failed: Vec<(usize, anyhow::Error)> = acks
                .wait_each()
                .await
                .into_iter()
                .zip(&owners)
                .filter_map(|(ack, &owner)| ack.err().map(|e| (owner, e)))
                .collect();
            if failed.is_empty() {
                break;
            }
            let worst = failed.iter().map(|(_, e)| classify(e)).fold(
                Class::Permanent,
                |worst, class| match (worst, class) {
                    (Class::Fatal, _) | (_, Class::Fatal) => Class::Fatal,
                    (Class::Passing, _) | (_, Class::Passing) => Class::Passing,
                    _ => Class::Permanent,
                },
            );
            match worst {
                Class::Fatal => {
                    let (_, error) = failed
                        .into_iter()
                        .find(|(_, e)| classify(e) == Class::Fatal)
                        .expect("a fatal failure");
                    return Err(Stop::Fatal(error));
                }
                Class::Passing => {
                    let (_, error) = &failed[0];
                    crate::metrics::worker()
                        .retries
                        .with_label_values(&["kafka"])
                        .inc();
                    tracing::warn!(
                        "batch of {}: {} records not acknowledged, applying again: {error:#}",
                        batch.len(),
                        failed.len()
                    );
                    self.pause(backoff, batch.len(), summary).await?;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let again = self.apply(batch, decoded, summary).await?;
                    let again = self.send(again).await;
                    (batch, decoded, verdicts, owners, acks) = (
                        again.batch,
                        again.decoded,
                        again.verdicts,
                        again.owners,
                        again.acks,
                    );
                }
                Class::Permanent => {
                    let mut replacements = Vec::new();
                    owners.clear();
                    for (owner, error) in failed {
                        if owners.contains(&owner) {
                            // Another record of the same message failed too:
                            // one dead letter stands for the message.
                            continue;
                        }
                        let delivery = &batch[owner];
                        let verdict = &mut verdicts[owner];
                        let record = match &verdict.reason {
                            Some(reason)
                                if verdict
                                    .records
                                    .first()
                                    .is_some_and(|r| r.payload.len() > MINIMAL_DEAD_LETTER) =>
                            {
                                tracing::warn!(origin = %delivery.origin(), "dead letter refused ({error:#}); sending it without the payload");
                                dead_letter_record(delivery, reason, 0)
                            }
                            Some(_) => {
                                return Err(Stop::Fatal(error.context(format!(
                                    "{} refuses even a dead letter without payload",
                                    Topics::dlq(&delivery.topic)
                                ))));
                            }
                            None => {
                                *verdict = Verdict::dead_letter(
                                    delivery,
                                    format!("its outcome could not be produced: {error:#}"),
                                );
                                verdict.records[0].clone()
                            }
                        };
                        verdict.records = vec![record.clone()];
                        replacements.push(record);
                        owners.push(owner);
                    }
                    acks = enqueue(self.producer, &replacements).await;
                }
            }
        }
        // Every effect is durable and every record acknowledged.
        if let Err(e) = self.handler.acknowledged(&batch).await {
            tracing::warn!("noting a batch's acknowledgement: {e:#}");
        }
        store_offsets(self.consumer, &batch);
        summary.processed += batch.len() as u64;
        let metrics = crate::metrics::worker();
        for verdict in &verdicts {
            *summary.outcomes.entry(verdict.outcome).or_default() += 1;
            metrics.messages.with_label_values(&[verdict.outcome]).inc();
            if let (DEAD_LETTERED, Some(reason)) = (verdict.outcome, &verdict.reason) {
                metrics.dead_lettered(reason);
            }
        }
        metrics.batch_size.observe(batch.len() as f64);
        metrics.produced.inc_by(owners.len() as u64);
        if let Some(first) = self.first_input {
            summary.active_ms = first.elapsed().as_millis() as u64;
        }
        Ok(())
    }

    /// Sleeps before a retry. `Interrupted`: a stop was asked for meanwhile;
    /// the batch is left uncommitted.
    async fn pause(
        &self,
        backoff: Duration,
        size: usize,
        summary: &mut WorkerSummary,
    ) -> Result<(), Stop> {
        tokio::select! {
            _ = self.shutdown.cancelled() => {
                summary.uncommitted += size as u64;
                summary.stopped = StopReason::Signal;
                Err(Stop::Interrupted)
            }
            _ = tokio::time::sleep(backoff) => Ok(()),
        }
    }

    /// Adds the messages that are ready now, without waiting, up to `bound`.
    fn take_ready(&self, batch: &mut Vec<Delivery>, bound: usize) -> Result<(), Stop> {
        match take_ready(self.consumer, batch, bound) {
            Some(e) => self.consumer_error(e),
            None => Ok(()),
        }
    }

    /// A consumer error is logged and passes, unless it is fatal: a refused
    /// login, a batch that cannot be decoded (librdkafka would fetch it
    /// again forever), or an input topic that no longer exists.
    fn consumer_error(&self, e: KafkaError) -> Result<(), Stop> {
        let code = e.rdkafka_error_code();
        if let Some(code) = code.filter(|&c| is_undecodable(c)) {
            // Blocks for a few seconds, once, on the way out.
            return Err(Stop::Fatal(locate_undecodable(
                self.kafka,
                self.consumer,
                code,
            )));
        }
        if let Some(reason) = self.consumer.context().refusals.reason() {
            // A broker that refuses the worker will go on refusing it.
            return Err(Stop::Fatal(anyhow::Error::new(AuthFailed(
                self.kafka.redact(&reason),
            ))));
        }
        tracing::warn!("consumer: {e}");
        if crate::failure::classify_kafka(&e) == Class::Fatal {
            return Err(Stop::Fatal(anyhow::Error::new(e).context("consuming")));
        }
        if matches!(
            code,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        ) {
            if let Err(missing) = check_topics_exist(self.consumer, self.spec) {
                return Err(Stop::Fatal(
                    anyhow::Error::new(FatalError(format!("{missing:#}")))
                        .context("an input topic was deleted under the worker"),
                ));
            }
        }
        Ok(())
    }
}

/// A dead letter at most this long already carries no payload to cut.
const MINIMAL_DEAD_LETTER: usize = MAX_REASON_BYTES + MAX_KEY_BYTES + 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(payload: Vec<u8>) -> Delivery {
        Delivery {
            topic: "money_transfers".into(),
            partition: 2,
            offset: 41,
            key: Some(b"alice".to_vec()),
            payload,
            timestamp_ms: Some(1),
            headers: vec![("trace-id".into(), "t-1".into())],
        }
    }

    fn letter(record: &Outgoing) -> serde_json::Value {
        serde_json::from_slice(&record.payload).unwrap()
    }

    #[test]
    fn a_dead_letter_keeps_a_small_payload_whole() {
        let record = dead_letter_record(&delivery(b"{not json".to_vec()), "not JSON", 1000);
        assert_eq!(record.topic, "money_transfers.dlq");
        assert_eq!(
            record.headers,
            [("trace-id".to_string(), "t-1".to_string())]
        );
        assert_eq!(record.key.as_deref(), Some("alice"));
        let letter = letter(&record);
        assert_eq!(letter["payload"], "{not json");
        assert_eq!(letter["payload_truncated"], false);
        assert_eq!(letter["payload_bytes"], 9);
        assert_eq!(letter["origin"]["offset"], 41);
    }

    #[test]
    fn a_dead_letter_is_cut_to_fit_whatever_the_payload_escapes_to() {
        for byte in [1u8, b'"', b'\\', b'\n', b'a', 0xff] {
            let payload = vec![byte; 900 * 1024];
            for limit in [MAX_DEAD_LETTER_BYTES, 4096, 0] {
                let record = dead_letter_record(&delivery(payload.clone()), "too odd", limit);
                let letter = letter(&record);
                assert!(
                    record.payload.len() <= limit.max(MINIMAL_DEAD_LETTER),
                    "byte {byte}, limit {limit}: {} bytes",
                    record.payload.len()
                );
                assert_eq!(letter["payload_truncated"], true);
                assert_eq!(letter["payload_bytes"], 900 * 1024);
                if limit == 0 {
                    assert_eq!(letter["payload"], "");
                } else {
                    assert!(!letter["payload"].as_str().unwrap().is_empty());
                }
            }
        }
    }

    #[test]
    fn prefixes_end_on_character_boundaries() {
        assert_eq!(prefix_fitting("héllo", 2), "h");
        assert_eq!(prefix_fitting("héllo", 3), "hé");
        assert_eq!(prefix_fitting("a\u{1}b", 6), "a");
        assert_eq!(prefix_fitting("a\u{1}b", 7), "a\u{1}");
        assert_eq!(escaped_len("a\"\n\u{1}é"), 1 + 2 + 2 + 6 + 2);
    }
}

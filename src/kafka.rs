//! Kafka clients with payctl's defaults, the outgoing-record type, and the
//! one way records are produced: enqueue all, then await every ack.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

/// The producer every publishing call takes ([`KafkaConfig::producer`]
/// makes one), named here so a library user need not name rdkafka.
pub use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

/// How long a produced record may wait for its ack before it counts as failed.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: &str = "10000";
/// The consumer session timeout payctl asks for unless `-X` says otherwise.
/// Kafka's own minimum is 6 s; a lower one makes group joins faster on brokers
/// that allow it (tests use 1 s on Tansu).
pub const DEFAULT_SESSION_TIMEOUT_MS: &str = "6000";

/// A record to produce: the outcome of applying a message, or a dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// Kafka headers, in order.
    pub headers: Vec<(String, String)>,
}

impl KafkaConfig {
    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "payctl");
        config
    }

    fn with_overrides(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// A producer that keeps the order of a key's records even when sends
    /// are retried (idempotent: no reordering, no duplicates). Getting a
    /// producer id costs a round trip or two at start, so one-message
    /// commands use [`KafkaConfig::producer`] instead.
    pub fn ordered_producer(&self) -> anyhow::Result<FutureProducer> {
        self.make_producer(true)
    }

    /// A producer that waits for all in-sync replicas and gives up on a
    /// record after [`DEFAULT_MESSAGE_TIMEOUT_MS`].
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        self.make_producer(false)
    }

    fn make_producer(&self, ordered: bool) -> anyhow::Result<FutureProducer> {
        let mut config = self.base();
        config
            .set("acks", "all")
            .set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS)
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "1000000")
            .set("enable.idempotence", if ordered { "true" } else { "false" });
        self.with_overrides(config)
            .create()
            .with_context(|| format!("creating a Kafka producer for {}", self.brokers))
    }

    /// A consumer in `group` for at-least-once work: offsets are stored by
    /// payctl only after a message's effect is durable, and committed from
    /// the stored ones.
    pub fn consumer<C, T>(&self, group: &str, context: C) -> anyhow::Result<T>
    where
        C: ConsumerContext,
        T: FromClientConfigAndContext<C>,
    {
        let mut config = self.base();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)
            .set("enable.partition.eof", "false")
            // A small prefetch, refilled often: 2 MB queued instead of
            // librdkafka's 64 MB keeps a worker near 35 MB of memory, and
            // a refill checked every 5 ms (not every second) keeps the
            // queue from running dry at 150,000 messages/s (measured: the
            // 1 s default at 4 MB read 27,000/s).
            .set("queued.max.messages.kbytes", "2048")
            .set("max.partition.fetch.bytes", "262144")
            .set("fetch.queue.backoff.ms", "5")
            .set("fetch.wait.max.ms", "10");
        self.with_overrides(config)
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", self.brokers))
    }

    /// A consumer for reading a few records at known offsets: a group of
    /// its own that commits nothing, and an end-of-partition event.
    pub fn probe_consumer(&self) -> anyhow::Result<rdkafka::consumer::BaseConsumer> {
        let mut config = self.base();
        config
            .set(
                "group.id",
                format!("payctl-probe-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50");
        self.with_overrides(config)
            .create()
            .with_context(|| format!("connecting to Kafka at {}", self.brokers))
    }

    /// An admin client, for creating and describing topics.
    pub fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.with_overrides(self.base())
            .create()
            .with_context(|| format!("creating a Kafka admin client for {}", self.brokers))
    }
}

/// How long payctl waits for any broker to answer before it says the
/// brokers cannot be reached.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long payctl asks the brokers again, after a failure, why they
/// refused it.
pub const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How soon a refused connection counts as unreachable: long enough for
/// librdkafka to try every address a name resolves to (`localhost` is
/// `::1` and `127.0.0.1`).
const REFUSED_AFTER: Duration = Duration::from_secs(2);

/// What a client has heard of brokers refusing it, from librdkafka's error
/// callback and its log. librdkafka reports a failed certificate check
/// sometimes as `SSL` and sometimes as a plain transport failure (which
/// also means "broker down"), and a consumer sees only the bare code; the
/// words of the failure tell them apart, so they are matched here.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    first: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Refusals {
    /// Notes a librdkafka error; true when it is a refusal.
    pub fn observe_error(&self, code: Option<RDKafkaErrorCode>, reason: &str) -> bool {
        let refused = code.is_some_and(is_auth_failure) || is_refusal_text(reason);
        if refused {
            if let Ok(mut first) = self.first.lock() {
                first.get_or_insert_with(|| reason.to_string());
            }
        }
        refused
    }

    /// Notes a librdkafka log line (`FAIL` lines carry connection failures).
    pub fn observe_log(&self, fac: &str, message: &str) {
        if fac == "FAIL" {
            // `[thrd:…]: ` names librdkafka's thread: noise in an error line.
            let message = match message.strip_prefix("[thrd:") {
                Some(rest) => rest.split_once("]: ").map_or(message, |(_, m)| m),
                None => message,
            };
            self.observe_error(None, message);
        }
    }

    /// The first refusal heard, in librdkafka's words.
    pub fn reason(&self) -> Option<String> {
        self.first.lock().ok().and_then(|f| f.clone())
    }
}

/// True for librdkafka's words for a refused login or an untrusted broker.
fn is_refusal_text(text: &str) -> bool {
    [
        "certificate verify failed",
        "SASL authentication error",
        "SASL authentication failed",
    ]
    .iter()
    .any(|marker| text.contains(marker))
}

/// Keeps what librdkafka reports about the connections of a reachability
/// check, so the one-line error can say why.
#[derive(Default)]
struct Reachability {
    /// The first reason a connection failed.
    reason: std::sync::Mutex<Option<String>>,
    /// Refused credentials or an untrusted broker.
    refusals: Refusals,
    /// True once every broker connection is down.
    all_down: std::sync::atomic::AtomicBool,
}

impl rdkafka::client::ClientContext for Reachability {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::info!(target: "librdkafka", ?level, "{fac}: {message}");
        self.refusals.observe_log(fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_down
                .store(true, std::sync::atomic::Ordering::Relaxed);
        } else if !self.refusals.observe_error(code, reason) {
            if let Ok(mut first) = self.reason.lock() {
                first.get_or_insert_with(|| reason.to_string());
            }
        }
    }
}

impl ConsumerContext for Reachability {}

impl KafkaConfig {
    /// Asks the brokers for metadata, once, before the real work: when none
    /// answers, fails with one line naming them (`cannot reach the Kafka
    /// brokers at 127.0.0.1:19999 (… Connection refused …)`) instead of
    /// librdkafka retrying in the background. Refused connections fail it
    /// within seconds; an address that never answers, after `timeout`. A
    /// broker that refuses the credentials (SASL) or whose certificate is
    /// not trusted (TLS) fails it at once with [`AuthFailed`].
    /// Blocking: async callers run it on `spawn_blocking`.
    pub fn check_reachable(&self, timeout: Duration) -> anyhow::Result<()> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let started = std::time::Instant::now();
        let client: BaseConsumer<Reachability> = self
            .with_overrides(self.base())
            .create_with_context(Reachability::default())
            .with_context(|| format!("creating a Kafka client for {}", self.brokers))?;
        let outcome = loop {
            let left = timeout.saturating_sub(started.elapsed());
            let attempt = left.min(Duration::from_millis(250));
            let error = match client.fetch_metadata(None, attempt) {
                Ok(_) => break Ok(()),
                Err(e) => e,
            };
            // Serves the error callbacks that fill in the context. A
            // consumer's errors may come out of the poll instead, as a bare
            // code; the words are then those librdkafka last logged.
            while let Some(polled) = client.poll(Duration::ZERO) {
                if let Some(code) = polled.err().and_then(|e| e.rdkafka_error_code()) {
                    if is_auth_failure(code) {
                        client
                            .context()
                            .refusals
                            .observe_error(Some(code), &code.to_string());
                    }
                }
            }
            let context = client.context();
            // A refusal does not go away by retrying: say so at once.
            if let Some(reason) = context.refusals.reason() {
                break Err(anyhow::Error::new(AuthFailed(self.redact(&reason))));
            }
            let refused = context.all_down.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() >= REFUSED_AFTER;
            if refused || started.elapsed() >= timeout {
                let reason = context
                    .reason
                    .lock()
                    .ok()
                    .and_then(|r| r.clone())
                    .unwrap_or_else(|| error.to_string());
                break Err(anyhow!(
                    "cannot reach the Kafka brokers at {} ({})",
                    self.brokers,
                    self.redact(&reason)
                ));
            }
        };
        // Tearing a client down joins its threads; the caller need not wait.
        std::thread::spawn(move || drop(client));
        outcome
    }
}

/// A broker refused payctl: wrong SASL credentials, a mechanism it does not
/// offer, or a TLS handshake that failed (an untrusted certificate, say).
/// Retrying cannot help, so it is fatal wherever it happens. The reason is
/// librdkafka's, with every secret payctl was given blanked out.
#[derive(Debug, thiserror::Error)]
#[error("broker authentication failed: {0}")]
pub struct AuthFailed(pub String);

/// True for the librdkafka codes that mean the broker refused payctl's
/// credentials or the TLS handshake failed. librdkafka reports a refused
/// SCRAM or PLAIN login as `Authentication` (-169) and a failed TLS
/// handshake as `SSL` (-181); the broker's own `SaslAuthenticationFailed`
/// (58) and the SASL protocol errors mean the same.
pub fn is_auth_failure(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::Authentication
            | C::SSL
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
    )
}

/// librdkafka options whose values are secrets: never printed.
fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "sasl.oauthbearer.config",
        "sasl.jaas",
    ]
    .iter()
    .any(|word| key.contains(word))
}

impl KafkaConfig {
    /// `text` with the value of every secret option (`sasl.password`,
    /// `ssl.key.password`, …) replaced by `***`, for error lines and logs.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (key, value) in &self.options {
            if is_secret_option(key) && !value.is_empty() {
                text = text.replace(value.as_str(), "***");
            }
        }
        text
    }

    /// `error` in the words of an authentication failure, when it is one
    /// whose reason librdkafka did not attach (a consumer's error carries
    /// only the code): asks the brokers once more, within `timeout`, for the
    /// reason. Any other error is returned as it is.
    pub async fn name_auth_failure(
        &self,
        error: anyhow::Error,
        timeout: Duration,
    ) -> anyhow::Error {
        let refused = error.chain().any(|cause| {
            cause
                .downcast_ref::<KafkaError>()
                .and_then(KafkaError::rdkafka_error_code)
                .is_some_and(is_auth_failure)
        });
        if !refused || error.downcast_ref::<AuthFailed>().is_some() {
            return error;
        }
        let kafka = self.clone();
        let checked = tokio::task::spawn_blocking(move || kafka.check_reachable(timeout)).await;
        let reason = match checked {
            Ok(Err(e)) => match e.downcast::<AuthFailed>() {
                Ok(AuthFailed(reason)) => reason,
                Err(other) => format!("{other:#}"),
            },
            // The brokers answer now: the refusal was the error's own.
            _ => error
                .chain()
                .find_map(|c| c.downcast_ref::<KafkaError>().map(ToString::to_string))
                .unwrap_or_default(),
        };
        // First in the line: what the operator must fix.
        error.context(AuthFailed(self.redact(&reason)))
    }
}

/// True for the codes a consumer gets for a batch it cannot decode: a codec
/// this build lacks (`NotImplemented`), compressed bytes that do not
/// decompress (`BadCompression`), or a corrupt batch. librdkafka does not
/// skip such a batch: it fetches it again and again, so a reader that only
/// logs the error spins forever.
pub fn is_undecodable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::NotImplemented
            | C::BadCompression
            | C::BadMessage
            | C::InvalidMessage
            | C::InvalidRecord
            | C::UnsupportedCompressionType
    )
}

/// A batch a consumer cannot decode, and where it is. Fatal for the reader:
/// skipping it would lose its messages, and nothing at or after it is
/// committed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot decode the batch at topic {topic} partition {partition} offset {offset} ({reason}); \
     nothing from that offset on was committed"
)]
pub struct Undecodable {
    pub topic: String,
    pub partition: i32,
    /// The first offset of the partition not read: the bad batch's.
    pub offset: String,
    pub reason: String,
}

/// How long a probe of one partition waits for its first message or error.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Says which assigned partition of `consumer` holds the batch that failed
/// with `code`, and at what offset, as an [`Undecodable`] error.
///
/// librdkafka's consumer error names the partition and offset, but the
/// rdkafka crate passes on only the code. The error arrives after every
/// message before it, so the bad partition's position is the bad batch:
/// each assigned partition is read afresh from the consumer's position by a
/// throwaway client (no group, nothing committed), and the one that fails
/// to decode right there is the one. Blocking, for a few seconds at most;
/// it runs only on the way out.
pub fn locate_undecodable<C, K>(
    kafka: &KafkaConfig,
    consumer: &K,
    code: RDKafkaErrorCode,
) -> anyhow::Error
where
    C: ConsumerContext,
    K: rdkafka::consumer::Consumer<C>,
{
    use rdkafka::Offset;
    let reason = code.to_string();
    let unknown = |topics: String| {
        anyhow!("cannot decode a batch on {topics} ({reason}); nothing from it on was committed")
    };
    let Ok(positions) = consumer.position() else {
        return unknown("the topic".into());
    };
    let committed = consumer.committed(Duration::from_secs(5)).ok();
    let mut starts: Vec<(String, i32, Offset)> = Vec::new();
    for element in positions.elements() {
        let stored = committed
            .as_ref()
            .and_then(|c| c.find_partition(element.topic(), element.partition()))
            .map(|e| e.offset());
        let start = match (element.offset(), stored) {
            (Offset::Offset(o), _) => Offset::Offset(o),
            (_, Some(Offset::Offset(o))) => Offset::Offset(o),
            _ => consumer
                .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(5))
                .map_or(Offset::Beginning, |(low, _)| Offset::Offset(low)),
        };
        starts.push((element.topic().to_string(), element.partition(), start));
    }
    let found = std::thread::scope(|scope| {
        let probes: Vec<_> = starts
            .iter()
            .map(|(topic, partition, start)| {
                scope.spawn(move || probe_undecodable(kafka, topic, *partition, *start))
            })
            .collect();
        probes
            .into_iter()
            .zip(&starts)
            .find_map(|(probe, (topic, partition, start))| {
                probe
                    .join()
                    .ok()
                    .flatten()
                    .map(|()| (topic, partition, start))
            })
    });
    match found {
        Some((topic, &partition, start)) => anyhow::Error::new(Undecodable {
            topic: topic.clone(),
            partition,
            offset: match start {
                Offset::Offset(o) => o.to_string(),
                _ => "of its first batch".to_string(),
            },
            reason,
        }),
        None => {
            let mut topics: Vec<&str> = starts.iter().map(|(t, _, _)| t.as_str()).collect();
            topics.dedup();
            unknown(format!("topic {}", topics.join(", ")))
        }
    }
}

/// `Some` when reading `topic`/`partition` from `start` fails to decode the
/// first batch there; `None` when a message, the end, or nothing comes.
fn probe_undecodable(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    start: rdkafka::Offset,
) -> Option<()> {
    use rdkafka::consumer::Consumer;
    let probe = kafka.probe_consumer().ok()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, start).ok()?;
    probe.assign(&tpl).ok()?;
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    while std::time::Instant::now() < deadline {
        match probe.poll(Duration::from_millis(100)) {
            Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => return None,
            Some(Err(e)) if e.rdkafka_error_code().is_some_and(is_undecodable) => return Some(()),
            _ => {}
        }
    }
    None
}

/// Produces every record and waits for every ack. All records are in flight
/// at once; the first failure is returned only after every ack is in.
pub async fn produce_all(producer: &FutureProducer, records: &[Outgoing]) -> anyhow::Result<()> {
    produce_each(producer, records).await.into_iter().collect()
}

/// Produces every record and returns each one's ack or failure, in order.
pub async fn produce_each(
    producer: &FutureProducer,
    records: &[Outgoing],
) -> Vec<anyhow::Result<()>> {
    enqueue(producer, records).await.wait_each().await
}

/// One record handed to the producer, or refused before it left.
enum Pending {
    Sent(rdkafka::producer::DeliveryFuture),
    /// librdkafka would not queue it (too large, say): it never will.
    Refused(KafkaError),
}

/// Records handed to the producer whose acks have not been awaited yet.
pub struct Acks {
    pending: Vec<(String, Pending)>,
}

impl Acks {
    /// Every record's ack or failure, in order. A failure keeps its
    /// [`KafkaError`] in the chain, for [`crate::failure::classify`].
    pub async fn wait_each(self) -> Vec<anyhow::Result<()>> {
        let (topics, pending): (Vec<String>, Vec<Pending>) = self.pending.into_iter().unzip();
        join_all(pending.into_iter().map(|p| async move {
            match p {
                Pending::Sent(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(anyhow::Error::new(e)),
                    Err(_) => Err(anyhow!("the producer went away")),
                },
                Pending::Refused(e) => Err(anyhow::Error::new(e)),
            }
        }))
        .await
        .into_iter()
        .zip(topics)
        .map(|(result, topic)| {
            if result.is_err() {
                crate::metrics::worker().producer_errors.inc();
            }
            result.with_context(|| format!("producing to topic {topic}"))
        })
        .collect()
    }

    /// Waits for every ack; the first failure, once all are in.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.wait_each().await.into_iter().collect()
    }
}

/// Hands every record to the producer without waiting for acks. When the
/// producer's queue is full, waits for room rather than failing; a record
/// librdkafka refuses outright fails alone, in its place among the acks.
pub async fn enqueue(producer: &FutureProducer, records: &[Outgoing]) -> Acks {
    let mut pending = Vec::with_capacity(records.len());
    for record in records {
        let headers = (!record.headers.is_empty()).then(|| {
            record
                .headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(value),
                    })
                })
        });
        let sent = loop {
            let mut future_record = FutureRecord::to(&record.topic).payload(&record.payload);
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            if let Some(headers) = &headers {
                future_record = future_record.headers(headers.clone());
            }
            match producer.send_result(future_record) {
                Ok(delivery) => break Pending::Sent(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => break Pending::Refused(e),
            }
        };
        pending.push((record.topic.clone(), sent));
    }
    Acks { pending }
}

/// Creates `names` with `partitions` each, every partition kept on
/// `replication_factor` brokers (the caller caps it at the cluster's size:
/// see `topics::create`). A topic that already exists is fine; any other
/// failure is an error naming the topic.
pub async fn create_topics(
    kafka: &KafkaConfig,
    names: &[String],
    partitions: i32,
    replication_factor: i32,
) -> anyhow::Result<Vec<(String, bool)>> {
    let admin = kafka.admin()?;
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("creating topics on {}", kafka.brokers))?;
    results
        .into_iter()
        .map(|result| match result {
            Ok(name) => Ok((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok((name, false)),
            Err((name, code)) => Err(anyhow!("creating topic {name}: {code}")),
        })
        .collect()
}

/// One partition's offsets as the broker reports them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

impl PartitionOffsets {
    /// Messages the broker says the partition holds.
    pub fn messages(&self) -> i64 {
        (self.high - self.low).max(0)
    }
}

/// A topic and its partitions' offsets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicOffsets {
    pub topic: String,
    pub partitions: Vec<PartitionOffsets>,
}

impl TopicOffsets {
    /// Messages in all partitions.
    pub fn messages(&self) -> i64 {
        self.partitions.iter().map(PartitionOffsets::messages).sum()
    }
}

/// What `cluster info` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterInfo {
    pub cluster_id: Option<String>,
    /// The controller's broker id, when the cluster names one.
    pub controller: Option<i32>,
    /// The broker that answered the metadata request.
    pub answered_by: String,
    pub brokers: Vec<BrokerInfo>,
    /// Topics, internal ones (`__…`) left out, and their partitions.
    pub topics: usize,
    pub partitions: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub controller: bool,
}

/// One partition of a consumer group's progress.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset; `None` before its first commit.
    pub committed: Option<i64>,
    pub end: i64,
    /// Messages not yet committed: end − committed (end − low before any commit).
    pub lag: i64,
}

/// A consumer group as its coordinator describes it (Kafka DescribeGroups).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupDescription {
    pub group: String,
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`,
    /// `Dead` or `Unknown`.
    pub state: String,
    pub members: Vec<GroupMember>,
}

/// One member of a group and the partitions it was given.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    /// `(topic, partition)` pairs assigned to the member.
    pub assignment: Vec<(String, i32)>,
}

impl GroupDescription {
    /// True while the group is between generations: joining or syncing.
    pub fn rebalancing(&self) -> bool {
        matches!(
            self.state.as_str(),
            "PreparingRebalance" | "CompletingRebalance"
        )
    }

    /// True when the broker knows nothing of the group: no members and no
    /// state beyond `Dead`/`Unknown` (a group with only committed offsets is
    /// `Empty`, and exists).
    pub fn unknown(&self) -> bool {
        self.members.is_empty() && matches!(self.state.as_str(), "Dead" | "Unknown")
    }

    /// Members holding no partition.
    pub fn unassigned_members(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.assignment.is_empty())
            .count()
    }

    /// What is wrong with the group, judged from one look: `None` when it is
    /// stable with every member assigned, or has no members at all.
    pub fn trouble(&self) -> Option<String> {
        if self.rebalancing() {
            return Some(format!(
                "{} with {} member(s)",
                self.state,
                self.members.len()
            ));
        }
        let idle = self.unassigned_members();
        if self.state == "Stable" && idle > 0 && idle == self.members.len() {
            return Some(format!(
                "{idle} member(s) and no partition assigned to any of them"
            ));
        }
        None
    }
}

/// The C string at `ptr`, or "" for NULL.
///
/// # Safety
/// `ptr` is NULL or points at a NUL-terminated string that outlives the call.
unsafe fn c_text(ptr: *const std::os::raw::c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}

/// Describes `groups` with librdkafka's DescribeConsumerGroups admin call
/// (rust-rdkafka does not wrap it), through the client behind `rk`.
/// Blocking; waits at most `timeout`.
fn describe_groups(
    rk: *mut rdkafka::bindings::rd_kafka_t,
    groups: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<GroupDescription>> {
    use rdkafka::bindings as rd;
    let names: Vec<std::ffi::CString> = groups
        .iter()
        .map(|g| std::ffi::CString::new(g.as_str()))
        .collect::<Result<_, _>>()
        .context("a group name holds a NUL byte")?;
    let mut pointers: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every pointer handed to librdkafka is valid for the call
    // (names and pointers outlive it); the queue and the event are destroyed
    // once, after their contents have been copied out.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeConsumerGroups(
            rk,
            pointers.as_mut_ptr(),
            pointers.len(),
            std::ptr::null(),
            queue,
        );
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms);
        rd::rd_kafka_queue_destroy(queue);
        if event.is_null() {
            bail!("the broker did not describe the group within {timeout:?}");
        }
        let result = (|| {
            if rd::rd_kafka_event_error(event)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                bail!("{}", c_text(rd::rd_kafka_event_error_string(event)));
            }
            let described = rd::rd_kafka_event_DescribeConsumerGroups_result(event);
            if described.is_null() {
                bail!("the broker answered something other than a group description");
            }
            let mut count = 0usize;
            let list = rd::rd_kafka_DescribeConsumerGroups_result_groups(described, &mut count);
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let group = *list.add(i);
                let name = c_text(rd::rd_kafka_ConsumerGroupDescription_group_id(group));
                let error = rd::rd_kafka_ConsumerGroupDescription_error(group);
                if !error.is_null() {
                    bail!(
                        "describing group {name}: {}",
                        c_text(rd::rd_kafka_error_string(error))
                    );
                }
                let state = c_text(rd::rd_kafka_consumer_group_state_name(
                    rd::rd_kafka_ConsumerGroupDescription_state(group),
                ));
                let mut members = Vec::new();
                for m in 0..rd::rd_kafka_ConsumerGroupDescription_member_count(group) {
                    let member = rd::rd_kafka_ConsumerGroupDescription_member(group, m);
                    let mut assignment = Vec::new();
                    let assigned = rd::rd_kafka_MemberDescription_assignment(member);
                    let partitions = if assigned.is_null() {
                        std::ptr::null()
                    } else {
                        rd::rd_kafka_MemberAssignment_partitions(assigned)
                    };
                    if !partitions.is_null() {
                        let partitions = &*partitions;
                        for p in 0..usize::try_from(partitions.cnt).unwrap_or(0) {
                            let element = &*partitions.elems.add(p);
                            assignment.push((c_text(element.topic), element.partition));
                        }
                    }
                    members.push(GroupMember {
                        member_id: c_text(rd::rd_kafka_MemberDescription_consumer_id(member)),
                        client_id: c_text(rd::rd_kafka_MemberDescription_client_id(member)),
                        host: c_text(rd::rd_kafka_MemberDescription_host(member)),
                        assignment,
                    });
                }
                out.push(GroupDescription {
                    group: name,
                    state,
                    members,
                });
            }
            Ok(out)
        })();
        rd::rd_kafka_event_destroy(event);
        result
    }
}

/// Sets `settings` (name, value) on `topic` with librdkafka's
/// IncrementalAlterConfigs admin call (rust-rdkafka wraps only the older
/// AlterConfigs, which replaces a topic's whole set of overrides and which
/// Tansu does not offer), through the client behind `rk`. Settings not
/// named are left as they are. Blocking; waits at most `timeout`.
pub(crate) fn set_topic_settings(
    rk: *mut rdkafka::bindings::rd_kafka_t,
    topic: &str,
    settings: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    use rdkafka::bindings as rd;
    let text = |s: &str| std::ffi::CString::new(s).context("a setting holds a NUL byte");
    let topic_name = text(topic)?;
    let pairs: Vec<(std::ffi::CString, std::ffi::CString)> = settings
        .iter()
        .map(|(name, value)| Ok((text(name)?, text(value)?)))
        .collect::<anyhow::Result<_>>()?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the strings outlive every call that reads them; librdkafka
    // copies the resource on the request, so it is destroyed here once; the
    // queue, the options and the event are destroyed once, after their
    // contents have been copied out.
    unsafe {
        let resource = rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            topic_name.as_ptr(),
        );
        for (name, value) in &pairs {
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                name.as_ptr(),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                value.as_ptr(),
            );
            if !error.is_null() {
                let message = c_text(rd::rd_kafka_error_string(error));
                rd::rd_kafka_error_destroy(error);
                rd::rd_kafka_ConfigResource_destroy(resource);
                bail!("{message}");
            }
        }
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        );
        rd::rd_kafka_AdminOptions_set_request_timeout(options, timeout_ms, std::ptr::null_mut(), 0);
        let queue = rd::rd_kafka_queue_new(rk);
        let mut resources = [resource];
        rd::rd_kafka_IncrementalAlterConfigs(rk, resources.as_mut_ptr(), 1, options, queue);
        rd::rd_kafka_ConfigResource_destroy(resource);
        rd::rd_kafka_AdminOptions_destroy(options);
        // The request times out on its own; the poll waits a little longer
        // so that the timeout arrives as an event, not as silence.
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1000));
        rd::rd_kafka_queue_destroy(queue);
        if event.is_null() {
            bail!("the broker did not answer within {timeout:?}");
        }
        let error_name = |code| c_text(rd::rd_kafka_err2name(code));
        let result = (|| {
            let code = rd::rd_kafka_event_error(event);
            if code == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE {
                bail!(
                    "the broker does not offer the IncrementalAlterConfigs API ({})",
                    error_name(code)
                );
            }
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                bail!(
                    "{} ({})",
                    c_text(rd::rd_kafka_event_error_string(event)),
                    error_name(code)
                );
            }
            let altered = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
            if altered.is_null() {
                bail!("the broker answered something other than a change of settings");
            }
            let mut count = 0usize;
            let list = rd::rd_kafka_IncrementalAlterConfigs_result_resources(altered, &mut count);
            for i in 0..count {
                let resource = *list.add(i);
                let code = rd::rd_kafka_ConfigResource_error(resource);
                if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let message = c_text(rd::rd_kafka_ConfigResource_error_string(resource));
                    bail!("the broker refused: {message} ({})", error_name(code));
                }
            }
            Ok(())
        })();
        rd::rd_kafka_event_destroy(event);
        result
    }
}

/// Read-only questions to the cluster: topics, offsets, groups, lag.
///
/// These are blocking librdkafka calls; async callers run them on
/// `spawn_blocking`.
pub struct Cluster {
    consumer: rdkafka::consumer::BaseConsumer,
    /// Reads a partition's last batch (see [`Cluster::watermarks`]); in a
    /// group of its own, committing nothing.
    probe: rdkafka::consumer::BaseConsumer,
    group: String,
    timeout: Duration,
}

/// How long a partition's last batch may pause before the read of it ends.
const LAST_BATCH_QUIET: Duration = Duration::from_millis(200);

impl Cluster {
    /// Connects as `group` (needed to read that group's committed offsets;
    /// the group is not joined).
    pub fn connect(kafka: &KafkaConfig, group: &str) -> anyhow::Result<Cluster> {
        let mut config = kafka.base();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer = kafka
            .with_overrides(config)
            .create()
            .with_context(|| format!("connecting to Kafka at {}", kafka.brokers))?;
        let probe = kafka.probe_consumer()?;
        Ok(Cluster {
            consumer,
            probe,
            group: group.to_string(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The cluster as its metadata describes it: brokers, controller,
    /// cluster id, topics and partitions (`payctl cluster info`).
    pub fn info(&self) -> anyhow::Result<ClusterInfo> {
        use rdkafka::consumer::Consumer;
        let metadata = self
            .consumer
            .fetch_metadata(None, self.timeout)
            .context("reading the cluster's metadata")?;
        let native = self.consumer.client().native_ptr();
        let timeout_ms = self.timeout.as_millis() as i32;
        // SAFETY: the handle outlives both calls; the cluster id is a
        // string librdkafka allocated for us, freed with its allocator.
        let (controller, cluster_id) = unsafe {
            let controller = rdkafka::bindings::rd_kafka_controllerid(native, timeout_ms);
            let id = rdkafka::bindings::rd_kafka_clusterid(native, timeout_ms);
            let cluster_id = (!id.is_null()).then(|| {
                let text = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
                rdkafka::bindings::rd_kafka_mem_free(native, id.cast());
                text
            });
            (controller, cluster_id)
        };
        let mut brokers: Vec<BrokerInfo> = metadata
            .brokers()
            .iter()
            .map(|b| BrokerInfo {
                id: b.id(),
                host: b.host().to_string(),
                port: b.port(),
                controller: b.id() == controller,
            })
            .collect();
        brokers.sort_by_key(|b| b.id);
        let topics: Vec<_> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__"))
            .collect();
        Ok(ClusterInfo {
            cluster_id,
            controller: (controller >= 0).then_some(controller),
            answered_by: format!(
                "{} (id {})",
                metadata.orig_broker_name(),
                metadata.orig_broker_id()
            ),
            brokers,
            topics: topics.len(),
            partitions: topics.iter().map(|t| t.partitions().len()).sum(),
        })
    }

    /// Topic names and partition ids, internal topics left out.
    pub fn topic_names(&self) -> anyhow::Result<Vec<(String, Vec<i32>)>> {
        use rdkafka::consumer::Consumer;
        let metadata = self
            .consumer
            .fetch_metadata(None, self.timeout)
            .context("reading topic metadata from the broker")?;
        let mut topics: Vec<(String, Vec<i32>)> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__"))
            .map(|t| {
                (
                    t.name().to_string(),
                    t.partitions().iter().map(|p| p.id()).collect(),
                )
            })
            .collect();
        topics.sort();
        Ok(topics)
    }

    /// A partition's low offset and its true end: the offset the next
    /// record will get. The broker's high watermark is read first; where
    /// the partition is not empty, the batch holding the record just below
    /// it is read too, because some brokers (the local Tansu) report the
    /// end as the last batch's base offset + 1: a batch of 10 records would
    /// count as 1. On a broker that reports the end right, the read finds
    /// one record and changes nothing.
    pub fn watermarks(&self, topic: &str, partition: i32) -> anyhow::Result<(i64, i64)> {
        use rdkafka::consumer::Consumer;
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .with_context(|| format!("reading offsets of {topic}/{partition}"))?;
        if high <= low {
            return Ok((low, high));
        }
        let end = self
            .last_offset_from(topic, partition, high - 1)
            .with_context(|| format!("reading the last batch of {topic}/{partition}"))?;
        Ok((low, end.map_or(high, |last| high.max(last + 1))))
    }

    /// The highest offset read from `start` on, until the partition has
    /// nothing more to give (its end, or a pause of [`LAST_BATCH_QUIET`]).
    fn last_offset_from(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
    ) -> anyhow::Result<Option<i64>> {
        use rdkafka::consumer::Consumer;
        use rdkafka::message::Message as _;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(start))?;
        self.probe.assign(&tpl)?;
        let mut last = None;
        let deadline = std::time::Instant::now() + self.timeout;
        let result = loop {
            let wait = if last.is_some() {
                LAST_BATCH_QUIET
            } else {
                Duration::from_millis(100)
            };
            match self.probe.poll(wait) {
                Some(Ok(message)) => last = Some(message.offset()),
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(last),
                Some(Err(e)) => break Err(anyhow::Error::new(e)),
                None if last.is_some() => break Ok(last),
                None if std::time::Instant::now() > deadline => break Ok(None),
                None => {}
            }
        };
        self.probe.unassign()?;
        result
    }

    /// Low and true end offsets of every partition of `topic` (see
    /// [`Cluster::watermarks`]).
    pub fn offsets(&self, topic: &str, partitions: &[i32]) -> anyhow::Result<TopicOffsets> {
        let mut offsets = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let (low, high) = self.watermarks(topic, partition)?;
            offsets.push(PartitionOffsets {
                partition,
                low,
                high,
            });
        }
        Ok(TopicOffsets {
            topic: topic.to_string(),
            partitions: offsets,
        })
    }

    /// Offsets of one topic by name; an unknown topic is an error.
    pub fn describe(&self, topic: &str) -> anyhow::Result<TopicOffsets> {
        let (_, partitions) = self
            .topic_names()?
            .into_iter()
            .find(|(name, _)| name == topic)
            .ok_or_else(|| anyhow!("no topic {topic:?} on the broker"))?;
        self.offsets(topic, &partitions)
    }

    /// Consumer groups the broker knows: (name, state, members).
    pub fn groups(&self) -> anyhow::Result<Vec<(String, String, usize)>> {
        use rdkafka::consumer::Consumer;
        let list = self
            .consumer
            .fetch_group_list(None, self.timeout)
            .context("listing consumer groups")?;
        let mut groups: Vec<_> = list
            .groups()
            .iter()
            .map(|g| {
                (
                    g.name().to_string(),
                    g.state().to_string(),
                    g.members().len(),
                )
            })
            .collect();
        groups.sort();
        Ok(groups)
    }

    /// Describes `groups` as their coordinators see them: state, members
    /// and each member's assignment.
    pub fn describe_groups(&self, groups: &[String]) -> anyhow::Result<Vec<GroupDescription>> {
        use rdkafka::consumer::Consumer;
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        describe_groups(self.consumer.client().native_ptr(), groups, self.timeout)
            .context("describing consumer groups")
    }

    /// The first offset of `partition` whose message is at or after `ms`
    /// (`high` when none is). The broker's answer is where the search
    /// starts, and messages older than `ms` are read past: the local Tansu
    /// answers offset 0 for any time.
    pub fn offset_at_time(
        &self,
        topic: &str,
        partition: i32,
        ms: i64,
        high: i64,
    ) -> anyhow::Result<i64> {
        use rdkafka::consumer::Consumer;
        use rdkafka::message::Message as _;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(ms))?;
        let answer = self
            .consumer
            .offsets_for_times(tpl, self.timeout)
            .with_context(|| format!("asking the offset of {topic}/{partition} at a time"))?;
        let start = match answer.elements().first().map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => return Ok(high),
        };
        if start >= high {
            return Ok(high);
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(start))?;
        self.probe.assign(&tpl)?;
        let deadline = std::time::Instant::now() + self.timeout;
        let found = loop {
            match self.probe.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let at_or_after = message.timestamp().to_millis().is_some_and(|t| t >= ms);
                    if at_or_after || message.offset() + 1 >= high {
                        break Ok(if at_or_after {
                            message.offset()
                        } else {
                            high
                        });
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(high),
                Some(Err(e)) => break Err(anyhow::Error::new(e)),
                None if std::time::Instant::now() > deadline => {
                    break Err(anyhow!(
                        "reading {topic}/{partition} for the first message at the time: no answer in {} s",
                        self.timeout.as_secs()
                    ))
                }
                None => {}
            }
        };
        self.probe.unassign()?;
        found
    }

    /// Commits `offsets` (topic, partition, offset) as this cluster's
    /// group's, without joining it.
    pub fn commit(&self, offsets: &[(String, i32, i64)]) -> anyhow::Result<()> {
        use rdkafka::consumer::{CommitMode, Consumer};
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .with_context(|| format!("committing offsets for group {}", self.group))
    }

    /// The committed offset of this cluster's group on every partition of
    /// `topics` (`None` where it never committed).
    pub fn committed(
        &self,
        topics: &[&(String, Vec<i32>)],
    ) -> anyhow::Result<Vec<(String, i32, Option<i64>)>> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{Offset, TopicPartitionList};
        let mut tpl = TopicPartitionList::new();
        for (name, partitions) in topics {
            for &p in partitions {
                tpl.add_partition(name, p);
            }
        }
        if tpl.count() == 0 {
            return Ok(Vec::new());
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, self.timeout)
            .context("reading the group's committed offsets")?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_string(), e.partition(), offset)
            })
            .collect())
    }

    /// Whether the broker knows `group`: it has members or a live state, or
    /// has committed an offset on some partition.
    pub fn group_exists(&self, group: &str) -> anyhow::Result<bool> {
        let described = self.describe_groups(&[group.to_string()])?;
        if described
            .iter()
            .any(|d| !d.members.is_empty() || d.state == "Stable" || d.rebalancing())
        {
            return Ok(true);
        }
        let all = self.topic_names()?;
        let every: Vec<&(String, Vec<i32>)> = all.iter().collect();
        Ok(self.committed(&every)?.iter().any(|(_, _, c)| c.is_some()))
    }

    /// This cluster's group's lag on every partition of `topics`; when
    /// `topics` is empty, of every topic the group has committed on or has
    /// a partition of assigned to a member (all their partitions, committed
    /// or not).
    pub fn lag(&self, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
        let all = self.topic_names()?;
        if let Some(missing) = topics
            .iter()
            .find(|t| !all.iter().any(|(name, _)| name == *t))
        {
            bail!("no topic {missing:?} on the broker");
        }
        let chosen: Vec<&(String, Vec<i32>)> = all
            .iter()
            .filter(|(name, _)| topics.is_empty() || topics.contains(name))
            .collect();
        let mut committed = self.committed(&chosen)?;
        if topics.is_empty() {
            let assigned: Vec<String> = self
                .describe_groups(std::slice::from_ref(&self.group))?
                .into_iter()
                .flat_map(|d| d.members)
                .flat_map(|m| m.assignment)
                .map(|(topic, _)| topic)
                .collect();
            let wanted: Vec<String> = committed
                .iter()
                .filter(|(_, _, c)| c.is_some())
                .map(|(t, _, _)| t.clone())
                .chain(assigned)
                .collect();
            committed.retain(|(t, _, _)| wanted.contains(t));
        }
        let mut rows = Vec::with_capacity(committed.len());
        for (topic, partition, committed) in committed {
            let (low, end) = self.watermarks(&topic, partition)?;
            rows.push(PartitionLag {
                topic,
                partition,
                committed,
                end,
                lag: (end - committed.unwrap_or(low)).max(0),
            });
        }
        rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(rows)
    }
}

/// Notes whether the group has given this consumer its assignment yet.
/// Shared by a consumer's context and [`leave_group`].
#[derive(Debug, Clone, Default)]
pub struct Membership {
    assigned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Membership {
    /// Called from `post_rebalance` on an assignment (even an empty one).
    pub fn note_assigned(&self) {
        self.assigned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once the group has answered this member's join with an assignment.
    pub fn assigned(&self) -> bool {
        self.assigned.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A consumer context that only tracks [`Membership`].
#[derive(Debug, Clone, Default)]
pub struct MembershipContext {
    pub membership: Membership,
}

impl rdkafka::ClientContext for MembershipContext {}

impl ConsumerContext for MembershipContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(_) = rebalance {
            self.membership.note_assigned();
        }
    }
}

/// The session timeout a consumer of `kafka` asks for.
fn session_timeout(kafka: &KafkaConfig) -> Duration {
    let ms = kafka
        .options
        .iter()
        .rev()
        .find(|(key, _)| key == "session.timeout.ms")
        .map_or(DEFAULT_SESSION_TIMEOUT_MS, |(_, value)| value.as_str());
    Duration::from_millis(ms.parse().unwrap_or(6000))
}

/// Leaves the consumer group cleanly, on every exit path of a subscribed
/// consumer; the caller drops the consumer right after (its drop closes it,
/// which sends LeaveGroup).
///
/// A consumer closed while its JoinGroup is still in flight sends
/// LeaveGroup before the broker has answered the join; the broker then
/// completes the join anyway and keeps the gone member as the group's
/// leader. Tansu never expires it: every later member waits for a SyncGroup
/// that never comes (`no partitions assigned … after 60s`). So a consumer
/// that has not been assigned yet first waits for the join to finish
/// (bounded by the session timeout and five seconds more), polling without
/// storing anything, and only then unsubscribes.
pub async fn leave_group<C: ConsumerContext + 'static>(
    kafka: &KafkaConfig,
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    membership: &Membership,
) {
    use rdkafka::consumer::Consumer;
    if !membership.assigned() {
        let patience = session_timeout(kafka) + Duration::from_secs(5);
        tracing::info!(
            "leaving the group: waiting up to {}s for the join in progress to finish",
            patience.as_secs()
        );
        let deadline = tokio::time::Instant::now() + patience;
        while !membership.assigned() && tokio::time::Instant::now() < deadline {
            // Polling serves the rebalance callbacks; a message received
            // here is dropped, its offset not stored.
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        if !membership.assigned() {
            tracing::warn!(
                "leaving the group before the broker answered the join; if later members \
                 of the group get no partitions, see `payctl groups delete`"
            );
        }
    }
    consumer.unsubscribe();
}

/// Where a scan starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
    Offset(i64),
    /// The last N messages of each partition (from its true end).
    Last(i64),
    /// The first message at or after this instant (Unix ms).
    Time(i64),
}

/// A read of one topic outside any worker group: for `topics consume` and
/// `transactions log`.
#[derive(Debug, Clone)]
pub struct Scan {
    pub topic: String,
    /// Only this partition (without a group).
    pub partition: Option<i32>,
    pub start: StartAt,
    /// Read as this consumer group, committing what was read.
    pub group: Option<String>,
    /// Keep waiting for new messages until interrupted.
    pub follow: bool,
    /// Without `follow`, stop once nothing has arrived for this long.
    pub wait: Duration,
}

/// What a scan's visitor did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Used (printed, say): its offset may be committed; read on.
    Next,
    /// Used, and the last one wanted.
    Last,
    /// Not used (the reader went away before it was written): its offset
    /// is not committed; stop.
    Refused,
}

impl Scan {
    /// Reads until `visit` says stop, the topic goes quiet (unless
    /// following) or `shutdown`. Returns how many messages were visited.
    /// `true` from `visit` reads on; `false` stops after that message.
    pub async fn run(
        &self,
        kafka: &KafkaConfig,
        shutdown: &tokio_util::sync::CancellationToken,
        mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<u64> {
        self.read(kafka, shutdown, |message| {
            Ok(if visit(message)? {
                Taken::Next
            } else {
                Taken::Last
            })
        })
        .await
    }

    /// Like [`Scan::run`], with the visitor saying whether it used each
    /// message. As a group, only the offsets of used messages are stored,
    /// each after `visit` returns, and those are committed on the way out:
    /// the next read of the group starts right after the last one used.
    pub async fn read(
        &self,
        kafka: &KafkaConfig,
        shutdown: &tokio_util::sync::CancellationToken,
        visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<Taken>,
    ) -> anyhow::Result<u64> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::{Offset, TopicPartitionList};

        let group = self
            .group
            .clone()
            .unwrap_or_else(|| format!("payctl-scan-{}", uuid::Uuid::new_v4().simple()));
        let mut config = kafka.base();
        config
            .set("group.id", &group)
            .set(
                "enable.auto.commit",
                if self.group.is_some() {
                    "true"
                } else {
                    "false"
                },
            )
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                if self.start == StartAt::End {
                    "latest"
                } else {
                    "earliest"
                },
            )
            .set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS);
        let context = MembershipContext::default();
        let membership = context.membership.clone();
        let consumer: StreamConsumer<MembershipContext> = kafka
            .with_overrides(config)
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", kafka.brokers))?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .context("reading topic metadata")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            bail!("no topic {:?} on the broker", self.topic);
        }
        if self.group.is_some() {
            if !matches!(self.start, StartAt::Beginning | StartAt::End) {
                bail!("with a group, its committed offsets say where to start (set them with `payctl groups reset`); read from an offset, the last N or a time without --group");
            }
            consumer.subscribe(&[&self.topic]).context("subscribing")?;
            // Every way out, errors included, leaves the group cleanly.
            let result = self.consume(kafka, &consumer, shutdown, visit).await;
            leave_group(kafka, &consumer, &membership).await;
            return result;
        }
        let chosen: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| self.partition.is_none_or(|only| only == *p))
            .collect();
        let mut tpl = TopicPartitionList::new();
        for &p in &chosen {
            let offset = match self.start {
                StartAt::Beginning => Offset::Beginning,
                StartAt::End => Offset::End,
                StartAt::Offset(o) => Offset::Offset(o),
                StartAt::Time(ms) => Offset::Offset(ms),
                StartAt::Last(_) => Offset::End,
            };
            tpl.add_partition_offset(&self.topic, p, offset)?;
        }
        match self.start {
            StartAt::Time(_) if tpl.count() > 0 => {
                // Each partition's first offset at or after the time (its
                // end where every message is older).
                tpl = consumer
                    .offsets_for_times(tpl, Duration::from_secs(10))
                    .context("finding the offsets for that time")?;
            }
            StartAt::Last(n) => {
                let (kafka, topic) = (kafka.clone(), self.topic.clone());
                let ends = tokio::task::spawn_blocking(move || {
                    Cluster::connect(&kafka, "payctl-inspect")?.offsets(&topic, &chosen)
                })
                .await??;
                tpl = TopicPartitionList::new();
                for p in ends.partitions {
                    let from = (p.high - n).max(p.low);
                    tpl.add_partition_offset(&self.topic, p.partition, Offset::Offset(from))?;
                }
            }
            _ => {}
        }
        if tpl.count() == 0 {
            match self.partition {
                Some(p) => bail!(
                    "topic {:?} has no partition {p} (it has {})",
                    self.topic,
                    partitions.len()
                ),
                None => bail!("topic {:?} has no partitions", self.topic),
            }
        }
        consumer.assign(&tpl).context("assigning partitions")?;
        self.consume(kafka, &consumer, shutdown, visit).await
    }

    /// The read loop, on an assigned or subscribed consumer.
    async fn consume(
        &self,
        kafka: &KafkaConfig,
        consumer: &rdkafka::consumer::StreamConsumer<MembershipContext>,
        shutdown: &tokio_util::sync::CancellationToken,
        mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<Taken>,
    ) -> anyhow::Result<u64> {
        use rdkafka::consumer::Consumer;
        // Joining a group takes a while; do not call the topic quiet before that.
        let grace = if self.group.is_some() {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        };
        let mut seen = 0u64;
        let mut stored = 0u64;
        let mut quiet_after = self.wait + grace;
        let outcome = loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                received = consumer.recv() => received,
                _ = tokio::time::sleep(quiet_after), if !self.follow => break Ok(()),
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => match e.rdkafka_error_code() {
                    // Read again, the batch fails again: stop, naming it.
                    Some(code) if is_undecodable(code) => {
                        break Err(locate_undecodable(kafka, consumer, code));
                    }
                    Some(code) if is_auth_failure(code) => {
                        break Err(anyhow::Error::new(e).context("consuming"));
                    }
                    _ => {
                        tracing::warn!("consumer: {e}");
                        continue;
                    }
                },
            };
            seen += 1;
            quiet_after = self.wait;
            let taken = match visit(&message) {
                Ok(taken) => taken,
                Err(e) => break Err(e),
            };
            if taken == Taken::Refused {
                break Ok(());
            }
            if self.group.is_some() {
                // Stored only now that the message has been used: the
                // commit covers exactly what was used.
                consumer
                    .store_offset_from_message(&message)
                    .context("storing the offset of a message read")?;
                stored += 1;
            }
            if taken == Taken::Last {
                break Ok(());
            }
        };
        if self.group.is_some() && stored > 0 {
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::warn!("committing the group's offsets: {e}");
            }
        }
        match outcome {
            Ok(()) => Ok(seen),
            Err(e) => Err(kafka.name_auth_failure(e, DIAGNOSE_TIMEOUT).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(state: &str, assignments: &[usize]) -> GroupDescription {
        GroupDescription {
            group: "g".into(),
            state: state.into(),
            members: assignments
                .iter()
                .enumerate()
                .map(|(i, &n)| GroupMember {
                    member_id: format!("m{i}"),
                    client_id: "payctl".into(),
                    host: "/127.0.0.1".into(),
                    assignment: (0..n as i32).map(|p| ("t".to_string(), p)).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_group_is_in_trouble_while_rebalancing_or_when_no_member_holds_a_partition() {
        assert_eq!(group("Stable", &[2, 1]).trouble(), None);
        assert_eq!(group("Stable", &[3, 0]).trouble(), None);
        assert_eq!(group("Empty", &[]).trouble(), None);
        assert_eq!(
            group("CompletingRebalance", &[0]).trouble().as_deref(),
            Some("CompletingRebalance with 1 member(s)")
        );
        assert!(group("PreparingRebalance", &[1]).rebalancing());
        assert_eq!(
            group("Stable", &[0, 0]).trouble().as_deref(),
            Some("2 member(s) and no partition assigned to any of them")
        );
        assert!(group("Dead", &[]).unknown());
        assert!(!group("Empty", &[]).unknown());
    }
}

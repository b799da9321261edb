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
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

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
            // Prefetch plenty of batches, but not librdkafka's 64 MB.
            .set("queued.max.messages.kbytes", "16384");
        self.with_overrides(config)
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", self.brokers))
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
/// How soon a refused connection counts as unreachable: long enough for
/// librdkafka to try every address a name resolves to (`localhost` is
/// `::1` and `127.0.0.1`).
const REFUSED_AFTER: Duration = Duration::from_secs(2);

/// Keeps what librdkafka reports about the connections of a reachability
/// check, so the one-line error can say why.
#[derive(Default)]
struct Reachability {
    /// The first reason a connection failed.
    reason: std::sync::Mutex<Option<String>>,
    /// True once every broker connection is down.
    all_down: std::sync::atomic::AtomicBool,
}

impl rdkafka::client::ClientContext for Reachability {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.all_down
                .store(true, std::sync::atomic::Ordering::Relaxed);
        } else if let Ok(mut first) = self.reason.lock() {
            first.get_or_insert_with(|| reason.to_string());
        }
    }
}

impl ConsumerContext for Reachability {}

impl KafkaConfig {
    /// Asks the brokers for metadata, once, before the real work: when none
    /// answers, fails with one line naming them (`cannot reach the Kafka
    /// brokers at 127.0.0.1:19999 (… Connection refused …)`) instead of
    /// librdkafka retrying in the background. Refused connections fail it
    /// within seconds; an address that never answers, after `timeout`.
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
            // Serves the error callbacks that fill in the context.
            let _ = client.poll(Duration::ZERO);
            let context = client.context();
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
                    "cannot reach the Kafka brokers at {} ({reason})",
                    self.brokers
                ));
            }
        };
        // Tearing a client down joins its threads; the caller need not wait.
        std::thread::spawn(move || drop(client));
        outcome
    }
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
        .map(|(result, topic)| result.with_context(|| format!("producing to topic {topic}")))
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

/// Read-only questions to the cluster: topics, offsets, groups, lag.
///
/// These are blocking librdkafka calls; async callers run them on
/// `spawn_blocking`.
pub struct Cluster {
    consumer: rdkafka::consumer::BaseConsumer,
    timeout: Duration,
}

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
        Ok(Cluster {
            consumer,
            timeout: Duration::from_secs(10),
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

    /// Low and high watermarks of every partition of `topic`.
    pub fn offsets(&self, topic: &str, partitions: &[i32]) -> anyhow::Result<TopicOffsets> {
        use rdkafka::consumer::Consumer;
        let mut offsets = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, partition, self.timeout)
                .with_context(|| format!("reading offsets of {topic}/{partition}"))?;
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

    /// This cluster's group's lag on `topics` (every topic it has committed
    /// on, when `topics` is empty).
    pub fn lag(&self, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{Offset, TopicPartitionList};
        let all = self.topic_names()?;
        let wanted: Vec<&(String, Vec<i32>)> = all
            .iter()
            .filter(|(name, _)| topics.is_empty() || topics.contains(name))
            .collect();
        if let Some(missing) = topics
            .iter()
            .find(|t| !all.iter().any(|(name, _)| name == *t))
        {
            bail!("no topic {missing:?} on the broker");
        }
        let mut tpl = TopicPartitionList::new();
        for (name, partitions) in &wanted {
            for &p in partitions {
                tpl.add_partition(name, p);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, self.timeout)
            .context("reading the group's committed offsets")?;
        let mut rows = Vec::new();
        for element in committed.elements() {
            let committed = match element.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            if topics.is_empty() && committed.is_none() {
                continue;
            }
            let (low, end) = self
                .consumer
                .fetch_watermarks(element.topic(), element.partition(), self.timeout)
                .with_context(|| {
                    format!(
                        "reading offsets of {}/{}",
                        element.topic(),
                        element.partition()
                    )
                })?;
            rows.push(PartitionLag {
                topic: element.topic().to_string(),
                partition: element.partition(),
                committed,
                end,
                lag: (end - committed.unwrap_or(low)).max(0),
            });
        }
        rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(rows)
    }
}

/// Where a scan starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
    Offset(i64),
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

impl Scan {
    /// Reads until `visit` says stop, the topic goes quiet (unless
    /// following) or `shutdown`. Returns how many messages were visited.
    pub async fn run(
        &self,
        kafka: &KafkaConfig,
        shutdown: &tokio_util::sync::CancellationToken,
        mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<bool>,
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
            .set(
                "auto.offset.reset",
                if self.start == StartAt::End {
                    "latest"
                } else {
                    "earliest"
                },
            )
            .set("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS);
        let consumer: StreamConsumer = kafka
            .with_overrides(config)
            .create()
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
        let mut grace = Duration::ZERO;
        if self.group.is_some() {
            consumer.subscribe(&[&self.topic]).context("subscribing")?;
            // Joining a group takes a while; do not call the topic quiet before that.
            grace = Duration::from_secs(10);
        } else {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                if self.partition.is_some_and(|only| only != p) {
                    continue;
                }
                let offset = match self.start {
                    StartAt::Beginning => Offset::Beginning,
                    StartAt::End => Offset::End,
                    StartAt::Offset(o) => Offset::Offset(o),
                };
                tpl.add_partition_offset(&self.topic, p, offset)?;
            }
            if let (0, Some(partition)) = (tpl.count(), self.partition) {
                bail!("topic {:?} has no partition {partition}", self.topic);
            }
            consumer.assign(&tpl).context("assigning partitions")?;
        }

        let mut seen = 0u64;
        let mut quiet_after = self.wait + grace;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = consumer.recv() => received,
                _ = tokio::time::sleep(quiet_after), if !self.follow => break,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("consumer: {e}");
                    continue;
                }
            };
            seen += 1;
            quiet_after = self.wait;
            if !visit(&message)? {
                break;
            }
        }
        if self.group.is_some() && seen > 0 {
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::warn!("committing the group's offsets: {e}");
            }
        }
        Ok(seen)
    }
}

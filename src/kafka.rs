//! Kafka clients with payctl's defaults, the outgoing-record type, and the
//! one way records are produced: enqueue all, then await every ack.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::consumer::ConsumerContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;

/// How long a produced record may wait for its ack before it counts as failed.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: &str = "10000";
/// The consumer session timeout payctl asks for unless `-X` says otherwise.
/// Kafka's own minimum is 6 s; a lower one makes group joins faster on brokers
/// that allow it (tests use 1 s on Tansu).
pub const DEFAULT_SESSION_TIMEOUT_MS: &str = "6000";

/// A record to produce: the outcome of applying a message, or a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
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

    /// A producer that waits for all in-sync replicas and gives up on a
    /// record after [`DEFAULT_MESSAGE_TIMEOUT_MS`].
    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        let mut config = self.base();
        config
            .set("acks", "all")
            .set("message.timeout.ms", DEFAULT_MESSAGE_TIMEOUT_MS)
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "1000000");
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
            .set("enable.partition.eof", "false");
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
    let deliveries = records.iter().map(|record| {
        let mut future_record = FutureRecord::to(&record.topic).payload(&record.payload);
        if let Some(key) = &record.key {
            future_record = future_record.key(key);
        }
        producer.send(future_record, Timeout::After(Duration::from_secs(5)))
    });
    let results = join_all(deliveries).await;
    records
        .iter()
        .zip(results)
        .map(|(record, result)| {
            result
                .map(|_| ())
                .map_err(|(e, _)| anyhow!(e))
                .with_context(|| format!("producing to topic {}", record.topic))
        })
        .collect()
}

/// Creates `names` with `partitions` each. A topic that already exists is
/// fine; any other failure is an error naming the topic.
pub async fn create_topics(
    kafka: &KafkaConfig,
    names: &[String],
    partitions: i32,
) -> anyhow::Result<Vec<(String, bool)>> {
    let admin = kafka.admin()?;
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
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

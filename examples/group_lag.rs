//! A consumer group's lag (`payctl::groups::lag::group_lag`): how many
//! messages of a topic the group has yet to commit, partition by partition.
//!
//! The example makes a topic of its own with 3 partitions, produces 10
//! messages, and reads the lag of a new group twice: before the group has
//! committed anything, and after a worker in that group has read 4 of them.
//!
//! Before its first commit a group has no offset on a partition; its lag is
//! then counted from the partition's oldest message: everything waits. That
//! holds when the topics are named, as here. Without topics `group_lag`
//! looks only at topics the group has committed on or is assigned, so a
//! group that never committed shows no partitions at all.
//!
//! Needs the local stack (`scripts/stack.sh up`); Redis is not used:
//!   cargo run --example group_lag
//!
//! Prints (<s> is the run's suffix; how the messages spread over the
//! partitions, and which of them the worker reads, varies by run):
//!   topic example-lag-<s>: 10 messages in 3 partitions
//!   before reading: total 10
//!     example-lag-<s>/0 committed - end 4 lag 4
//!     example-lag-<s>/1 committed - end 3 lag 3
//!     example-lag-<s>/2 committed - end 3 lag 3
//!   after reading 4: total 6
//!     example-lag-<s>/0 committed - end 4 lag 4
//!     example-lag-<s>/1 committed 1 end 3 lag 2
//!     example-lag-<s>/2 committed 3 end 3 lag 0

mod common;

use std::time::Duration;

use payctl::config::{KafkaConfig, Topics, WorkerLimits};
use payctl::groups::lag::{group_lag, GroupLag};
use payctl::kafka::{create_topics, produce_all, Outgoing};
use payctl::worker::{self, BatchHandler, Decoder, Delivery, Verdict, WorkerSpec};
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 10;
const PARTITIONS: i32 = 3;
const READ: u64 = 4;

/// A worker that only reads: its messages count as done once read.
struct Reader;

impl BatchHandler for Reader {
    type Decoded = ();

    fn decoder(&self) -> Decoder<()> {
        worker::no_decoding()
    }

    async fn apply(&mut self, batch: &[Delivery], _: &[()]) -> anyhow::Result<Vec<Verdict>> {
        Ok(batch
            .iter()
            .map(|_| Verdict::new("read", Vec::new()))
            .collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = common::kafka();
    let suffix = common::suffix();
    let topic = format!("example-lag-{suffix}");
    let group = format!("example-lag-{suffix}");

    // A worker needs its input's dead-letter topic too. One replica: the
    // local broker is one broker.
    create_topics(&kafka, &[topic.clone(), Topics::dlq(&topic)], PARTITIONS, 1).await?;
    let records: Vec<Outgoing> = (0..MESSAGES)
        .map(|i| Outgoing {
            topic: topic.clone(),
            key: Some(format!("order-{i}")),
            payload: format!("{{\"order\":{i}}}").into_bytes(),
            headers: Vec::new(),
        })
        .collect();
    produce_all(&kafka.producer()?, &records).await?;
    println!("topic {topic}: {MESSAGES} messages in {PARTITIONS} partitions");

    show("before reading", &kafka, &group, &topic).await?;

    let spec = WorkerSpec {
        group: group.clone(),
        inputs: vec![topic.clone()],
        outputs: Vec::new(),
        outcomes: &[],
        limits: WorkerLimits {
            max_messages: Some(READ),
            // Only if the messages never arrive.
            until_idle: Some(Duration::from_secs(10)),
            batch_size: WorkerLimits::DEFAULT_BATCH_SIZE,
            ..WorkerLimits::default()
        },
        redis: None,
    };
    // The worker commits what it read before it returns.
    let summary = worker::run(&kafka, &spec, &mut Reader, CancellationToken::new()).await?;
    show(
        &format!("after reading {}", summary.processed),
        &kafka,
        &group,
        &topic,
    )
    .await
}

/// Prints the group's lag on `topic`: the total, then one line per partition.
async fn show(label: &str, kafka: &KafkaConfig, group: &str, topic: &str) -> anyhow::Result<()> {
    let GroupLag {
        total, partitions, ..
    } = group_lag(kafka, group, vec![topic.to_string()]).await?;
    println!("{label}: total {total}");
    for p in partitions {
        let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
        println!(
            "  {}/{} committed {committed} end {} lag {}",
            p.topic, p.partition, p.end, p.lag
        );
    }
    Ok(())
}

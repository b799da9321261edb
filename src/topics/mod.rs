//! Kafka topic tooling, in the spirit of kcat, kafkactl and rpk.

pub mod admin;
pub mod consume;
pub mod create;
pub mod describe;
pub mod filter;
pub mod list;
pub mod produce;

use crate::config::KafkaConfig;
use crate::kafka::Cluster;

/// Runs blocking cluster questions off the async runtime.
pub async fn ask<T, F>(kafka: &KafkaConfig, question: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Cluster) -> anyhow::Result<T> + Send + 'static,
{
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let cluster = Cluster::connect(&kafka, "payctl-inspect")?;
        question(&cluster)
    })
    .await?
}

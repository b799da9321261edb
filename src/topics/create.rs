//! `payctl topics create`: create topics (brokers such as Tansu create none on first use).

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::output::{self, Output, Rendered, Report};

/// Create topics; ones that already exist are left as they are.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl topics create money_transfers money_transfers.dlq --partitions 3
  payctl topics create payments --replication-factor 3   # capped at the brokers the cluster has")]
pub struct Args {
    /// Topic names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Partitions per new topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Copies of each partition, on different brokers; capped at the number
    /// of brokers the cluster reports (with a warning on stderr).
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
}

#[derive(Serialize)]
struct Created {
    topic: String,
    created: bool,
}

#[derive(Serialize)]
#[serde(transparent)]
struct CreatedList(Vec<Created>);

impl Report for CreatedList {
    fn render(&self) -> Rendered {
        let mut table = output::table(["topic", "result"]);
        for c in &self.0 {
            table.add_row(vec![
                c.topic.clone(),
                if c.created { "created" } else { "exists" }.to_string(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// The most copies Kafka keeps of a partition (its protocol field is an i16).
const MAX_REPLICATION_FACTOR: i32 = i16::MAX as i32;

/// The replication factor to ask for: `requested`, capped at the `brokers`
/// the cluster has, since a partition cannot have two copies on one broker.
/// `Some(message)` says why it was capped.
pub fn replication_factor(requested: i32, brokers: usize) -> (i32, Option<String>) {
    let available = i32::try_from(brokers).unwrap_or(i32::MAX).max(1);
    if requested <= available {
        return (requested, None);
    }
    let noun = if brokers == 1 { "broker" } else { "brokers" };
    (
        available,
        Some(format!(
            "replication factor {requested} capped at {available}: the cluster has {brokers} {noun}"
        )),
    )
}

/// How many brokers the cluster's metadata lists.
pub(super) async fn broker_count(kafka: &KafkaConfig) -> anyhow::Result<usize> {
    let admin = kafka.admin()?;
    let brokers = kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .with_context(|| format!("reading cluster metadata from {brokers}"))?;
        anyhow::Ok(metadata.brokers().len())
    })
    .await?
}

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(
        (1..=MAX_REPLICATION_FACTOR).contains(&args.replication_factor),
        "--replication-factor must be from 1 to {MAX_REPLICATION_FACTOR}, got {}",
        args.replication_factor
    );
    let brokers = broker_count(kafka).await?;
    let (factor, capped) = replication_factor(args.replication_factor, brokers);
    if let Some(capped) = capped {
        tracing::warn!("{capped}");
    }
    let results = crate::kafka::create_topics(kafka, &args.names, args.partitions, factor).await?;
    let list = results
        .into_iter()
        .map(|(topic, created)| Created { topic, created })
        .collect();
    output.emit(&CreatedList(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_factor_is_capped_at_the_brokers() {
        assert_eq!(
            replication_factor(3, 1),
            (
                1,
                Some("replication factor 3 capped at 1: the cluster has 1 broker".into())
            )
        );
        assert_eq!(
            replication_factor(5, 3),
            (
                3,
                Some("replication factor 5 capped at 3: the cluster has 3 brokers".into())
            )
        );
        assert_eq!(replication_factor(3, 3), (3, None));
        assert_eq!(replication_factor(1, 1), (1, None));
        assert_eq!(replication_factor(2, 6), (2, None));
        // A cluster that lists no broker still gets one copy asked for.
        assert_eq!(replication_factor(3, 0).0, 1);
        assert_eq!(replication_factor(i32::MAX, usize::MAX), (i32::MAX, None));
    }
}

//! `payctl groups lag`: committed offset, end offset and lag per partition.

use serde::Serialize;

use crate::config::KafkaConfig;
use crate::exit::refuse;
use crate::kafka::{Cluster, PartitionLag};
use crate::output::{self, Output, Rendered, Report};

/// Show a group's committed offset, end offset and lag per partition.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl groups lag payctl-transfer-process
  payctl groups lag payctl-notify --topic payment_transactions --output json")]
pub struct Args {
    pub group: String,
    /// Only these topics (default: every topic the group has committed on or
    /// has assigned to a member, with all their partitions).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
}

/// A group's lag, partition by partition.
#[derive(Debug, Serialize)]
pub struct GroupLag {
    pub group: String,
    pub total: i64,
    pub partitions: Vec<PartitionLag>,
}

impl Report for GroupLag {
    fn render(&self) -> Rendered {
        let mut table = output::table(["topic", "partition", "committed", "end", "lag"]);
        for p in &self.partitions {
            let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
            table.add_row(vec![
                p.topic.clone(),
                p.partition.to_string(),
                committed,
                p.end.to_string(),
                p.lag.to_string(),
            ]);
        }
        table.add_row(vec![
            "total".into(),
            String::new(),
            String::new(),
            String::new(),
            self.total.to_string(),
        ]);
        Rendered::Table(table)
    }
}

/// The lag of `group` on `topics`.
pub async fn group_lag(
    kafka: &KafkaConfig,
    group: &str,
    topics: Vec<String>,
) -> anyhow::Result<GroupLag> {
    let (kafka, name) = (kafka.clone(), group.to_string());
    let partitions =
        tokio::task::spawn_blocking(move || Cluster::connect(&kafka, &name)?.lag(&topics))
            .await??;
    Ok(GroupLag {
        group: group.to_string(),
        total: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    })
}

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    // Without --topic there is nothing to show for a group the broker does
    // not know: say so (exit 1) rather than print an empty table. With
    // --topic, a group yet to commit is shown as everything waiting.
    let (config, name) = (kafka.clone(), args.group.clone());
    let exists = !args.topics.is_empty()
        || tokio::task::spawn_blocking(move || {
            Cluster::connect(&config, &name)?.group_exists(&name)
        })
        .await??;
    if !exists {
        return Err(refuse(format!(
            "no consumer group {:?} on the broker: it has no members and has committed no offsets",
            args.group
        )));
    }
    output.emit(&group_lag(kafka, &args.group, args.topics).await?)
}

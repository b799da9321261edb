//! `payctl topics describe`: per-partition offsets of one topic.

use crate::config::KafkaConfig;
use crate::kafka::TopicOffsets;
use crate::output::{self, Output, Rendered, Report};

/// Show a topic's partitions with their low and high offsets.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl topics describe money_transfers")]
pub struct Args {
    pub topic: String,
}

impl Report for TopicOffsets {
    fn render(&self) -> Rendered {
        let mut table = output::table(["partition", "low", "high", "messages"]);
        for p in &self.partitions {
            table.add_row(vec![
                p.partition.to_string(),
                p.low.to_string(),
                p.high.to_string(),
                p.messages().to_string(),
            ]);
        }
        Rendered::Table(table)
    }
}

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    let topic = args.topic;
    let offsets = super::ask(kafka, move |cluster| cluster.describe(&topic)).await?;
    output.emit(&offsets)
}

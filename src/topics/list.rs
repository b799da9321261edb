//! `payctl topics list`: topics with partitions, messages and high watermarks.

use serde::Serialize;

use crate::config::KafkaConfig;
use crate::kafka::TopicOffsets;
use crate::output::{self, Output, Rendered, Report};

/// List topics: partitions, messages and high watermarks.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl topics list\n  payctl topics list --output json | jq '.[] | select(.messages > 0)'"
)]
pub struct Args {}

#[derive(Serialize)]
struct TopicRow {
    topic: String,
    partitions: usize,
    messages: i64,
    high_watermarks: Vec<i64>,
}

#[derive(Serialize)]
#[serde(transparent)]
struct TopicTable(Vec<TopicRow>);

impl Report for TopicTable {
    fn render(&self) -> Rendered {
        let mut table = output::table(["topic", "partitions", "messages", "high watermarks"]);
        for t in &self.0 {
            let marks: Vec<String> = t.high_watermarks.iter().map(i64::to_string).collect();
            table.add_row(vec![
                t.topic.clone(),
                t.partitions.to_string(),
                t.messages.to_string(),
                marks.join(" "),
            ]);
        }
        Rendered::Table(table)
    }
}

impl From<TopicOffsets> for TopicRow {
    fn from(t: TopicOffsets) -> TopicRow {
        TopicRow {
            messages: t.messages(),
            partitions: t.partitions.len(),
            high_watermarks: t.partitions.iter().map(|p| p.high).collect(),
            topic: t.topic,
        }
    }
}

pub async fn run(_args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    let rows = super::ask(kafka, |cluster| {
        cluster
            .topic_names()?
            .into_iter()
            .map(|(name, partitions)| cluster.offsets(&name, &partitions).map(TopicRow::from))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await?;
    output.emit(&TopicTable(rows))
}

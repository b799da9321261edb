//! `payctl topics create`: create topics (brokers such as Tansu create none on first use).

use serde::Serialize;

use crate::config::KafkaConfig;
use crate::output::{self, Output, Rendered, Report};

/// Create topics; ones that already exist are left as they are.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl topics create money_transfers money_transfers.dlq --partitions 3"
)]
pub struct Args {
    /// Topic names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Partitions per new topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
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

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    let results = crate::kafka::create_topics(kafka, &args.names, args.partitions).await?;
    let list = results
        .into_iter()
        .map(|(topic, created)| Created { topic, created })
        .collect();
    output.emit(&CreatedList(list))
}

//! `payctl cluster info`: the brokers, the controller and how much the
//! cluster holds, as `kcat -L` shows it.

use crate::config::KafkaConfig;
use crate::kafka::ClusterInfo;
use crate::output::{self, Output, Rendered, Report};

/// Show the cluster: id, brokers, controller, topic and partition counts.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl cluster info
  payctl cluster info --output json | jq '.brokers[] | select(.controller)'")]
pub struct InfoArgs {}

impl Report for ClusterInfo {
    fn render(&self) -> Rendered {
        let mut table = output::table(["", ""]);
        let cluster_id = self.cluster_id.clone().unwrap_or_else(|| "-".into());
        let controller = self.controller.map_or("-".into(), |c| c.to_string());
        table.add_row(vec!["cluster id".to_string(), cluster_id]);
        table.add_row(vec!["controller".to_string(), controller]);
        table.add_row(vec!["answered by".to_string(), self.answered_by.clone()]);
        for b in &self.brokers {
            let role = if b.controller { " (controller)" } else { "" };
            table.add_row(vec![
                format!("broker {}", b.id),
                format!("{}:{}{role}", b.host, b.port),
            ]);
        }
        table.add_row(vec!["topics".to_string(), self.topics.to_string()]);
        table.add_row(vec!["partitions".to_string(), self.partitions.to_string()]);
        Rendered::Table(table)
    }
}

pub async fn info(_args: InfoArgs, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    let info = crate::topics::ask(kafka, |cluster| cluster.info()).await?;
    output.emit(&info)
}

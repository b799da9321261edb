//! `payctl groups list`: the consumer groups the broker knows.

use serde::Serialize;

use crate::config::KafkaConfig;
use crate::output::{self, Output, Rendered, Report};

/// List consumer groups with their state and member count.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl groups list\n  payctl groups list --output json | jq -r '.[].group'"
)]
pub struct Args {}

#[derive(Serialize)]
struct Group {
    group: String,
    state: String,
    members: usize,
}

#[derive(Serialize)]
#[serde(transparent)]
struct Groups(Vec<Group>);

impl Report for Groups {
    fn render(&self) -> Rendered {
        let mut table = output::table(["group", "state", "members"]);
        for g in &self.0 {
            table.add_row(vec![
                g.group.clone(),
                g.state.clone(),
                g.members.to_string(),
            ]);
        }
        Rendered::Table(table)
    }
}

pub async fn run(_args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    let groups = crate::topics::ask(kafka, |cluster| cluster.groups()).await?;
    let groups = groups
        .into_iter()
        .map(|(group, state, members)| Group {
            group,
            state,
            members,
        })
        .collect();
    output.emit(&Groups(groups))
}

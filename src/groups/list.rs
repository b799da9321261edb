//! `payctl groups list`: the consumer groups the broker knows.

use serde::Serialize;

use crate::config::KafkaConfig;
use crate::kafka::GroupDescription;
use crate::output::{self, Output, Rendered, Report};

/// List consumer groups with their state and members; a group stuck in a
/// rebalance is marked.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl groups list
  payctl groups list audit nightly-replay      # also these groups
  payctl groups list --output json | jq -r '.[] | select(.trouble) | .group'")]
pub struct Args {
    /// Also describe these groups (the broker may not list every group:
    /// Tansu's ListGroups answers none).
    pub groups: Vec<String>,
    #[command(flatten)]
    pub workers: super::WorkerGroups,
}

#[derive(Serialize)]
struct Group {
    group: String,
    state: String,
    members: usize,
    /// Members with no partition assigned.
    unassigned: usize,
    /// What looks wrong (a rebalance that does not end, no member assigned).
    trouble: Option<String>,
}

#[derive(Serialize)]
#[serde(transparent)]
struct Groups(Vec<Group>);

impl Report for Groups {
    fn render(&self) -> Rendered {
        let mut table = output::table(["group", "state", "members", "unassigned", "trouble"]);
        for g in &self.0 {
            table.add_row(vec![
                g.group.clone(),
                g.state.clone(),
                g.members.to_string(),
                g.unassigned.to_string(),
                g.trouble.clone().unwrap_or_default(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// How long a rebalance may last between two looks before it counts as stuck.
pub const REBALANCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Describes `wanted` and every group the broker lists; groups the broker
/// knows nothing of are left out unless named in `named`. A group seen
/// rebalancing is looked at again after [`REBALANCE_PATIENCE`], and counts
/// as troubled only if it is still rebalancing with the same members.
pub async fn describe_all(
    kafka: &KafkaConfig,
    named: Vec<String>,
    wanted: Vec<String>,
) -> anyhow::Result<Vec<(GroupDescription, Option<String>)>> {
    let first = {
        let (named, wanted) = (named.clone(), wanted.clone());
        crate::topics::ask(kafka, move |cluster| {
            let mut names: Vec<String> = cluster.groups()?.into_iter().map(|g| g.0).collect();
            for g in named.iter().chain(&wanted) {
                if !names.contains(g) {
                    names.push(g.clone());
                }
            }
            names.sort();
            let described = cluster.describe_groups(&names)?;
            Ok(described
                .into_iter()
                .filter(|d| !d.unknown() || named.contains(&d.group))
                .collect::<Vec<_>>())
        })
        .await?
    };
    let rebalancing: Vec<String> = first
        .iter()
        .filter(|d| d.rebalancing())
        .map(|d| d.group.clone())
        .collect();
    let second = if rebalancing.is_empty() {
        Vec::new()
    } else {
        tokio::time::sleep(REBALANCE_PATIENCE).await;
        crate::topics::ask(kafka, move |cluster| cluster.describe_groups(&rebalancing)).await?
    };
    Ok(first
        .into_iter()
        .map(|d| {
            let trouble = if d.rebalancing() {
                let later = second.iter().find(|l| l.group == d.group);
                let same_members = |l: &GroupDescription| {
                    let ids = |g: &GroupDescription| {
                        let mut ids: Vec<&str> =
                            g.members.iter().map(|m| m.member_id.as_str()).collect();
                        ids.sort();
                        ids.into_iter().map(String::from).collect::<Vec<_>>()
                    };
                    ids(l) == ids(&d)
                };
                match later {
                    Some(l) if l.rebalancing() && same_members(l) => Some(format!(
                        "stuck in {} for {}s or more with {} member(s): see `payctl groups delete`",
                        l.state,
                        REBALANCE_PATIENCE.as_secs(),
                        l.members.len()
                    )),
                    _ => None,
                }
            } else {
                d.trouble()
            };
            (d, trouble)
        })
        .collect())
}

pub async fn run(args: Args, kafka: &KafkaConfig, output: Output) -> anyhow::Result<()> {
    let described = describe_all(kafka, args.groups, args.workers.names()).await?;
    let groups = described
        .into_iter()
        .map(|(d, trouble)| Group {
            unassigned: d.unassigned_members(),
            members: d.members.len(),
            group: d.group,
            state: d.state,
            trouble,
        })
        .collect();
    output.emit(&Groups(groups))
}

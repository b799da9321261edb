//! Consumer groups: which exist, how far behind each is, and removing one.

pub mod delete;
pub mod lag;
pub mod list;
pub mod reset;

use crate::config::KafkaConfig;
use crate::exit::refuse;

/// Refuses (exit 1) while `group` has members or a live state: changing a
/// group under running consumers would be undone by their next commit.
pub async fn refuse_if_active(kafka: &KafkaConfig, group: &str) -> anyhow::Result<()> {
    let name = group.to_string();
    let described = crate::topics::ask(kafka, move |cluster| {
        cluster.describe_groups(std::slice::from_ref(&name))
    })
    .await?;
    if let Some(d) = described.first() {
        // Tansu describes a live group as Stable with no members listed:
        // the state alone says someone is there.
        if !d.members.is_empty() || d.state == "Stable" || d.rebalancing() {
            return Err(refuse(format!(
                "group {group} is {} with {} member(s) listed: stop its consumers first",
                d.state,
                d.members.len()
            )));
        }
    }
    Ok(())
}

/// The consumer groups of payctl's workers, as their `--group` defaults or
/// environment variables name them. `status` and `groups list` look at
/// these even when the broker lists no groups (Tansu's ListGroups answers
/// an empty list).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerGroups {
    #[arg(
        long,
        env = "PAYCTL_TRANSFER_GROUP",
        default_value = "payctl-transfer-process"
    )]
    pub transfer_group: String,
    #[arg(long, env = "PAYCTL_NOTIFY_GROUP", default_value = "payctl-notify")]
    pub notify_group: String,
    #[arg(long, env = "PAYCTL_RATES_GROUP", default_value = "payctl-rates-serve")]
    pub rates_group: String,
    #[arg(
        long,
        env = "PAYCTL_PAYMENTS_GROUP",
        default_value = "payctl-payments-save"
    )]
    pub payments_group: String,
}

impl WorkerGroups {
    /// The four names, without repeats, in a fixed order.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for g in [
            &self.transfer_group,
            &self.notify_group,
            &self.rates_group,
            &self.payments_group,
        ] {
            if !names.contains(g) {
                names.push(g.clone());
            }
        }
        names
    }
}

//! Consumer groups: which exist, how far behind each is, and removing one.

pub mod delete;
pub mod lag;
pub mod list;

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

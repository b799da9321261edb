//! `payctl accounts list`: every account with its balance.

use crate::accounts::{self, AccountList};
use crate::output::Output;
use crate::store::Redis;

/// List accounts, oldest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl accounts list\n  payctl accounts list --output json")]
pub struct Args {}

pub async fn run(_args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    output.emit(&AccountList(accounts::list(redis).await?))
}

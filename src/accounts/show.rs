//! `payctl accounts show`: one account's currency and balance.

use crate::accounts;
use crate::output::Output;
use crate::store::Redis;

/// Show an account (exit 1 when it does not exist).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl accounts show alice\n  payctl accounts show alice --output json | jq .balance"
)]
pub struct Args {
    /// Account id.
    pub id: String,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let account = accounts::require(redis, &args.id).await?;
    output.emit(&account)
}

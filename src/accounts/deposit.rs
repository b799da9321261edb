//! `payctl accounts deposit`: add money to an account.

use crate::accounts;
use crate::output::Output;
use crate::store::Redis;

/// Deposit into an account (in the account's currency).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl accounts deposit alice 25.00")]
pub struct Args {
    /// Account id.
    pub id: String,
    /// Amount, exact decimal in the account's currency.
    #[arg(allow_hyphen_values = true)]
    pub amount: String,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let account = accounts::deposit(redis, &args.id, &args.amount).await?;
    output.emit(&account)
}

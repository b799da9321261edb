//! `payctl accounts open`: a new account with a currency and an opening balance.

use crate::accounts;
use crate::money::{Currency, Money};
use crate::output::Output;
use crate::store::Redis;

/// Open an account.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl accounts open alice --currency USD --balance 100.00\n  payctl accounts open bob --currency USD")]
pub struct Args {
    /// Account id (letters, digits, _.@:-).
    pub id: String,
    /// ISO 4217 currency code.
    #[arg(long, default_value = "USD")]
    pub currency: String,
    /// Opening balance, exact decimal (e.g. 100.00).
    #[arg(long)]
    pub balance: Option<String>,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let currency = Currency::parse(&args.currency)?;
    let balance = match &args.balance {
        Some(text) => Some(Money::parse_amount(text, currency)?),
        None => None,
    };
    let account = accounts::open(redis, &args.id, currency, balance).await?;
    output.emit(&account)
}

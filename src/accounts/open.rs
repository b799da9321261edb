//! `payctl accounts open`: a new account with a currency and an opening balance.

use crate::accounts;
use crate::money::{Currency, Decimal, Money};
use crate::output::Output;
use crate::store::Redis;

/// Open an account.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl accounts open alice --currency USD --balance 100.00\n  payctl accounts open bob --currency USD"
)]
pub struct Args {
    /// Account id (letters, digits, _.@:-).
    pub id: String,
    /// ISO 4217 currency code.
    #[arg(long, default_value = "USD")]
    pub currency: String,
    /// Opening balance, exact decimal (e.g. 100.00).
    #[arg(long, allow_hyphen_values = true)]
    pub balance: Option<String>,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let currency = Currency::parse(&args.currency)?;
    // Zero is a fine opening balance; anything else must be a valid amount.
    let balance = match args
        .balance
        .as_deref()
        .map(Decimal::parse_typed)
        .transpose()?
    {
        Some(value) if !value.is_zero() => Some(Money::amount(value, currency)?),
        _ => None,
    };
    let account = accounts::open(redis, &args.id, currency, balance).await?;
    output.emit(&account)
}

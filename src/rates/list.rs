//! `payctl rates list`: every stored rate.

use crate::output::Output;
use crate::rates::{self, RateList};
use crate::store::Redis;

/// List stored rates.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl rates list\n  payctl rates list --output json")]
pub struct Args {}

pub async fn run(_args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    output.emit(&RateList(rates::sorted(redis).await?))
}

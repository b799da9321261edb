//! `payctl rates list`: every stored rate.

use crate::output::Output;
use crate::rates::{self, RateList};
use crate::store::Redis;

/// List stored rates.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl rates list\n  payctl rates list --output json")]
pub struct Args {}

pub async fn run(_args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let mut list: Vec<_> = rates::all(redis).await?.into_values().collect();
    list.sort_by(|a, b| (&a.base, &a.quote).cmp(&(&b.base, &b.quote)));
    output.emit(&RateList(list))
}

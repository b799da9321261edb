//! `payctl transfer list`: the newest transfers, optionally by status.

use crate::output::Output;
use crate::store::Redis;
use crate::transfer::{TransferList, TransferStatus};

/// List transfers, newest first.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl transfer list\n  payctl transfer list --status rejected --limit 50\n  payctl transfer list --output json | jq -r '.[].transfer_id'"
)]
pub struct Args {
    /// Only transfers in this status.
    #[arg(long, value_enum)]
    pub status: Option<TransferStatus>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    output.emit(&TransferList(
        super::list(redis, args.status, args.limit).await?,
    ))
}

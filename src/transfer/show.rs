//! `payctl transfer show`: one transfer record.

use crate::exit::refuse;
use crate::output::Output;
use crate::store::Redis;

/// Show a transfer (exit 1 when there is none with that id).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl transfer show 0b6f2c1e-8d2a-4c47-9d1e-2f0c8a7b9e31\n  payctl transfer show $ID --output json | jq .status"
)]
pub struct Args {
    /// Transfer id.
    pub id: String,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    match super::get(redis, &args.id).await? {
        Some(transfer) => output.emit(&super::ShownTransfer(transfer)),
        None => Err(refuse(format!(
            "no transfer {}",
            crate::output::id_for_message(&args.id)
        ))),
    }
}

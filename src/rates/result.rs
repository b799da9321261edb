//! `payctl rates result`: the answer to an `--async` conversion, or that it is pending.

use crate::exit::refuse;
use crate::output::Output;
use crate::rates::convert::{self, ShownRecord};
use crate::store::Redis;

/// Show an async conversion: pending, done (with the answer) or failed (exit 1).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl rates result 5f0c9a8e-3b1d-4d55-9a55-0f7f3c1a2b4d\n  payctl rates result $ID --output json | jq .status"
)]
pub struct Args {
    /// Request id printed by `rates convert --async`.
    pub id: String,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let Some(record) = convert::lookup(redis, &args.id).await? else {
        return Err(refuse(format!("no conversion request {:?}", args.id)));
    };
    let shown = ShownRecord(record);
    output.emit(&shown)?;
    match (shown.0.status.as_str(), &shown.0.error) {
        ("failed", Some(error)) => Err(refuse(format!("conversion failed: {error}"))),
        _ => Ok(()),
    }
}

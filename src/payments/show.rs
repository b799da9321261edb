//! `payctl payments show`: one payment.

use crate::exit::refuse;
use crate::output::Output;
use crate::store::Redis;

/// Show a payment (exit 1 when there is none with that id).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl payments show 7d1c2a9e-0b7f-4a53-8f58-7c1f1c3e9a10 --output json"
)]
pub struct Args {
    pub id: String,
}

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    match super::get(redis, &args.id).await? {
        Some(payment) => output.emit(&payment),
        None => Err(refuse(format!("no payment {:?}", args.id))),
    }
}

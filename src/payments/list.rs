//! `payctl payments list`: payments, newest first, by user or status.

use anyhow::Context as _;
use redis::AsyncCommands;

use serde::Serialize;

use crate::output::{Output, Rendered, Report};
use crate::payments::show::PaymentView;
use crate::payments::{get_many, keys, PaymentList};
use crate::store::Redis;

/// List payments, newest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl payments list --user alice
  payctl payments list --status duplicated
  payctl payments list --status accepted --limit 100 --output json")]
pub struct Args {
    #[arg(long)]
    pub user: Option<String>,
    /// A processing status (new, in_processing, processed, completed,
    /// duplicated) or a payment status (accepted, error, decline, unknown).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// Payments, printed: amounts as strings (see [`PaymentView`]).
struct Listed(PaymentList);

impl Serialize for Listed {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0 .0.iter().map(PaymentView::from))
    }
}

impl Report for Listed {
    fn render(&self) -> Rendered {
        self.0.render()
    }
}

const KNOWN: [&str; 9] = [
    "new",
    "in_processing",
    "processed",
    "completed",
    "duplicated",
    "accepted",
    "error",
    "decline",
    "unknown",
];

pub async fn run(args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    if let Some(status) = &args.status {
        anyhow::ensure!(
            KNOWN.contains(&status.as_str()),
            "unknown status {status:?} (known: {})",
            KNOWN.join(", ")
        );
    }
    let index = match &args.user {
        Some(user) => keys::by_user(user),
        None => keys::PAYMENTS.to_string(),
    };
    const PAGE: isize = 500;
    let mut found = Vec::new();
    let mut start = 0isize;
    while found.len() < args.limit {
        let ids: Vec<String> = redis
            .zrevrange(&index, start, start + PAGE - 1)
            .await
            .context("listing payments")?;
        if ids.is_empty() {
            break;
        }
        start += PAGE;
        for payment in get_many(redis, &ids).await? {
            let matches = args.status.as_deref().is_none_or(|s| {
                s == payment.processing_status.as_str() || s == payment.payment_status.as_str()
            });
            if matches && found.len() < args.limit {
                found.push(payment);
            }
        }
    }
    output.emit(&Listed(PaymentList(found)))
}

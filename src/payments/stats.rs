//! `payctl payments stats`: counts by processing status and payment status.

use std::collections::BTreeMap;

use anyhow::Context as _;
use redis::AsyncCommands;
use serde::Serialize;

use crate::output::{self, Output, Rendered, Report};
use crate::payments::{get_many, keys, PaymentStatus, ProcessingStatus};
use crate::store::Redis;

/// Count payments by processing status × payment status.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl payments stats\n  payctl payments stats --output json")]
pub struct Args {}

#[derive(Serialize)]
struct Stats {
    total: u64,
    /// processing status → payment status → count.
    counts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
}

impl Report for Stats {
    fn render(&self) -> Rendered {
        let mut header = vec!["processing \\ payment"];
        header.extend(PaymentStatus::ALL.iter().map(|s| s.as_str()));
        header.push("total");
        let mut table = output::table(header);
        for processing in ProcessingStatus::ALL {
            let row = &self.counts[processing.as_str()];
            let mut cells = vec![processing.as_str().to_string()];
            cells.extend(
                PaymentStatus::ALL
                    .iter()
                    .map(|s| row[s.as_str()].to_string()),
            );
            cells.push(row.values().sum::<u64>().to_string());
            table.add_row(cells);
        }
        let mut total = vec!["total".to_string()];
        total.extend(PaymentStatus::ALL.iter().map(|s| {
            self.counts
                .values()
                .map(|row| row[s.as_str()])
                .sum::<u64>()
                .to_string()
        }));
        total.push(self.total.to_string());
        table.add_row(total);
        Rendered::Table(table)
    }
}

pub async fn run(_args: Args, redis: &mut Redis, output: Output) -> anyhow::Result<()> {
    let mut counts: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = ProcessingStatus::ALL
        .iter()
        .map(|p| {
            (
                p.as_str(),
                PaymentStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            )
        })
        .collect();
    let ids: Vec<String> = redis
        .zrange(keys::PAYMENTS, 0, -1)
        .await
        .context("listing payments")?;
    let payments = get_many(redis, &ids).await?;
    for p in &payments {
        *counts
            .get_mut(p.processing_status.as_str())
            .and_then(|row| row.get_mut(p.payment_status.as_str()))
            .expect("every status has a cell") += 1;
    }
    output.emit(&Stats {
        total: payments.len() as u64,
        counts,
    })
}

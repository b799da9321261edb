//! `payctl topics consume`: messages as JSON lines (or raw values).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::{Scan, StartAt};
use crate::output;

/// Print messages as JSON lines with key, partition, offset, timestamp, value
/// and headers (or only values, with --raw). Stops when the topic has been
/// quiet for --wait seconds, after -n messages, or — with --follow — on SIGINT.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl topics consume payment_transactions --from-beginning -n 10
  payctl topics consume money_transfers.dlq --from-beginning | jq .value
  payctl topics consume payments --partition 2 --offset 100 --raw
  payctl topics consume rate_changes --follow
  payctl topics consume payment_transactions --group audit   # commits what it read")]
pub struct Args {
    pub topic: String,
    /// Start at the oldest message (default: only new ones).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long)]
    pub offset: Option<i64>,
    /// Read only this partition.
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Stop after this many messages.
    #[arg(short = 'n', long = "count")]
    pub count: Option<u64>,
    /// Read as this consumer group and commit what was read.
    #[arg(long)]
    pub group: Option<String>,
    /// Keep waiting for new messages.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Without --follow: stop after this many seconds without a message.
    #[arg(long, default_value_t = 2.0)]
    pub wait: f64,
    /// Print only the values.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<std::borrow::Cow<'a, str>>,
    value: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, std::borrow::Cow<'a, str>>,
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.wait.is_finite() && args.wait >= 0.0,
        "--wait must be a number of seconds"
    );
    let scan = Scan {
        topic: args.topic.clone(),
        partition: args.partition,
        start: match (args.from_beginning, args.offset) {
            (true, _) => StartAt::Beginning,
            (_, Some(offset)) => StartAt::Offset(offset),
            _ => StartAt::End,
        },
        group: args.group.clone(),
        follow: args.follow,
        wait: Duration::from_secs_f64(args.wait),
    };
    let mut printed = 0u64;
    scan.run(kafka, &shutdown, |message| {
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
        let text = if args.raw {
            value.into_owned()
        } else {
            let headers = message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key, String::from_utf8_lossy(h.value.unwrap_or_default())))
                        .collect()
                })
                .unwrap_or_default();
            serde_json::to_string(&Line {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
                key: message.key().map(String::from_utf8_lossy),
                value,
                headers,
            })?
        };
        printed += 1;
        let reader_still_there = output::line(&text)?;
        Ok(reader_still_there && args.count.is_none_or(|n| printed < n))
    })
    .await?;
    Ok(())
}

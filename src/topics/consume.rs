//! `payctl topics consume`: messages as JSON lines (or raw values).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::{Scan, StartAt, Taken};
use crate::output;

/// Print messages as JSON lines with key, partition, offset, timestamp, value
/// and headers (or only values, with --raw). Stops when the topic has been
/// quiet for --wait seconds, after -n messages, when the reader of stdout
/// goes away, or — with --follow — on SIGINT. With --group, exactly the
/// messages written to stdout are committed.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl topics consume payment_transactions --from-beginning -n 10
  payctl topics consume money_transfers.dlq --from-beginning --value-json | jq .value.reason
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
    /// Read as this consumer group and commit what was printed: the next
    /// run of the group starts right after the last message written.
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
    /// Embed values that are JSON as JSON (objects, arrays, numbers) rather
    /// than as a string, so `jq .value.user_id` works; other values stay
    /// strings.
    #[arg(long, conflicts_with = "raw")]
    pub value_json: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<std::borrow::Cow<'a, str>>,
    value: Value<'a>,
    /// `{}` when the message has none.
    headers: BTreeMap<&'a str, std::borrow::Cow<'a, str>>,
}

/// A message's value: text, or with --value-json, the JSON it holds.
#[derive(Serialize)]
#[serde(untagged)]
enum Value<'a> {
    Text(std::borrow::Cow<'a, str>),
    Json(serde_json::Value),
}

impl<'a> Value<'a> {
    fn of(text: std::borrow::Cow<'a, str>, embed_json: bool) -> Value<'a> {
        if embed_json {
            if let Ok(json) = serde_json::from_str(&text) {
                return Value::Json(json);
            }
        }
        Value::Text(text)
    }
}

/// Cancels `stop` once the reader of stdout has gone (a closed pipe, as
/// after `| head -1`), so that a read waiting for the next message ends at
/// once instead of when that message arrives. Watches only what epoll can
/// (pipes, sockets, terminals); for a file it never fires.
async fn stop_when_reader_goes(stop: CancellationToken) {
    use std::os::fd::AsFd as _;
    use tokio::io::{unix::AsyncFd, Interest};
    let Ok(stdout) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return;
    };
    // SAFETY: the AsyncFd owns the duplicated descriptor, so it stays open
    // and the same for the AsyncFd's whole life.
    let Ok(stdout) = (unsafe { AsyncFd::register_with_interest(stdout, Interest::ERROR) }) else {
        return;
    };
    if stdout.ready(Interest::ERROR).await.is_ok() {
        tracing::debug!("stdout closed: stopping");
        stop.cancel();
    }
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
    let stop = shutdown.child_token();
    let watcher = tokio::spawn(stop_when_reader_goes(stop.clone()));
    let mut printed = 0u64;
    let read = scan
        .read(kafka, &stop, |message| {
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
                    value: Value::of(value, args.value_json),
                    headers,
                })?
            };
            if !output::line(&text)? {
                return Ok(Taken::Refused);
            }
            printed += 1;
            Ok(if args.count.is_none_or(|n| printed < n) {
                Taken::Next
            } else {
                Taken::Last
            })
        })
        .await;
    watcher.abort();
    read?;
    Ok(())
}

//! `payctl topics consume`: messages as JSON lines (or raw values).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Headers, Message};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::{Scan, StartAt, Taken};
use crate::output;
use crate::topics::filter::{passes_all, OffsetSpec, Template, Where};

/// Print messages as JSON lines with key, partition, offset, timestamp, value
/// and headers (or only values, with --raw, or a --format template). Stops
/// when the topic has been quiet for --wait seconds, after -n messages, when
/// the reader of stdout goes away, or — with --follow — on SIGINT. With
/// --group, the messages read are committed (printed, or passed over by
/// --where).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl topics consume payment_transactions --offset start -n 10
  payctl topics consume payment_transactions --offset -5             # the last 5 of each partition
  payctl topics consume payment_transactions --offset @-1h --where status=rejected
  payctl topics consume payments --offset @2026-11-20T10:00:00Z --where user_id=alice --where 'plan~^pro'
  payctl topics consume money_transfers.dlq --offset start --value-json | jq .value.reason
  payctl topics consume payments --partition 2 --offset 100 --format '%p/%o %k %s'
  payctl topics consume rate_changes --follow
  payctl topics consume payment_transactions --group audit   # commits what it read

--where FIELD=VALUE, FIELD!=VALUE or FIELD~REGEX tests a top-level or dotted
JSON field of the value (meta.source, items.0.id); several must all hold. A
field's text is a string's own, or the JSON of a number, bool or null as
written (amount=12.50). A missing field, or a value that is not JSON,
matches no = or ~ and every !=.

--format: %t topic, %p partition, %o offset, %k key, %s value, %h headers
(k=v,k=v), %T timestamp (Unix ms), %% a percent sign; \\n, \\t escapes. One
line per message.")]
pub struct Args {
    pub topic: String,
    /// Start at the oldest message (the same as --offset start).
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Where to start in each partition, as rpk's -o: start, end (the
    /// default: only new messages), an offset N, -N (the last N),
    /// @2026-11-20T10:00:00Z, or @-1h (an hour ago). (payctl's -o is
    /// --output, as in every command.)
    #[arg(long, value_name = "SPEC", allow_hyphen_values = true)]
    pub offset: Option<OffsetSpec>,
    /// Read only this partition.
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Stop after this many messages (printed, after --where).
    #[arg(short = 'n', long = "count")]
    pub count: Option<u64>,
    /// Only messages whose JSON value passes: FIELD=VALUE, FIELD!=VALUE or
    /// FIELD~REGEX (repeatable; all must pass).
    #[arg(long = "where", value_name = "FILTER")]
    pub filters: Vec<Where>,
    /// Read as this consumer group and commit what was read: the next
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
    /// Print each message through this template (see below).
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["raw", "value_json"])]
    pub format: Option<Template>,
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
            (true, _) | (_, Some(OffsetSpec::Start)) => StartAt::Beginning,
            (_, None | Some(OffsetSpec::End)) => StartAt::End,
            (_, Some(OffsetSpec::At(offset))) => StartAt::Offset(offset),
            (_, Some(OffsetSpec::Last(n))) => StartAt::Last(n),
            (_, Some(OffsetSpec::Time(ms))) => StartAt::Time(ms),
        },
        group: args.group.clone(),
        follow: args.follow,
        wait: Duration::from_secs_f64(args.wait),
    };
    let stop = shutdown.child_token();
    let watcher = tokio::spawn(stop_when_reader_goes(stop.clone()));
    let mut printed = 0u64;
    // The broker's offset for a time is where to start looking (the local
    // Tansu answers 0 for any time); older messages are passed over here.
    let not_before = match args.offset {
        Some(OffsetSpec::Time(ms)) => Some(ms),
        _ => None,
    };
    let read = scan
        .read(kafka, &stop, |message| {
            let too_old =
                not_before.is_some_and(|ms| message.timestamp().to_millis().is_none_or(|t| t < ms));
            if too_old || !passes_all(&args.filters, message.payload()) {
                return Ok(Taken::Next);
            }
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
            let text = if let Some(template) = &args.format {
                template.render(message)
            } else if args.raw {
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

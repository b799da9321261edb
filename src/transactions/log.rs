//! `payctl transactions log`: the history of transaction outcomes.
//!
//! The topic is the record of what happened; this reads it from the start
//! (no consumer group), keeps the newest matches and prints them.

use std::time::Duration;

use anyhow::Context as _;

use rdkafka::message::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::events::TransactionEvent;
use crate::kafka::{Cluster, Scan, StartAt};
use crate::output::{self, Output, Rendered, Report};
use crate::topics::filter::{passes_all, Where};

/// Show transaction outcomes from the transactions topic, newest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transactions log
  payctl transactions log --user alice --limit 50
  payctl transactions log --status rejected --since 2h
  payctl transactions log --where role=debit --where 'reason~balance'
  payctl transactions log --output json | jq -r '.[] | select(.status == \"rejected\") | .transaction_id'")]
pub struct Args {
    /// Only this user's outcomes.
    #[arg(long)]
    pub user: Option<String>,
    /// Only outcomes in this status (completed, rejected, accepted, …).
    #[arg(long)]
    pub status: Option<String>,
    /// Only outcomes of this recent past: 90s, 15m, 2h, 7d.
    #[arg(long, value_name = "AGE")]
    pub since: Option<String>,
    /// Only events whose JSON passes: FIELD=VALUE, FIELD!=VALUE or
    /// FIELD~REGEX on top-level or dotted fields (repeatable; all must
    /// pass), as in `topics consume --where`.
    #[arg(long = "where", value_name = "FILTER")]
    pub filters: Vec<Where>,
    /// At most this many, counted after the filters; reading stops once
    /// the newest this many are found.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Stop reading after this many seconds without a message.
    #[arg(long, default_value_t = 1.5)]
    pub wait: f64,
}

/// One outcome found, with where it was on the topic.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LogEntry)]
pub struct Entry {
    #[serde(flatten, serialize_with = "serialize_event")]
    #[schema(value_type = EventView)]
    event: TransactionEvent,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
}

/// An event as printed: the amount a string with the currency's digits
/// (`"12.50"`); the event on the topic keeps its number.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TransactionEvent)]
pub(crate) struct EventView<'a> {
    transaction_id: &'a str,
    user_id: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    counterparty: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurred_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payment_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reannounced: bool,
}

fn serialize_event<S: serde::Serializer>(e: &TransactionEvent, s: S) -> Result<S::Ok, S::Error> {
    EventView {
        transaction_id: &e.transaction_id,
        user_id: &e.user_id,
        status: &e.status,
        event_id: e.event_id.as_deref(),
        role: e.role.as_deref(),
        counterparty: e.counterparty.as_deref(),
        amount: e
            .amount
            .map(|a| output::amount_text(a, e.currency.as_deref())),
        currency: e.currency.as_deref(),
        reason: e.reason.as_deref(),
        occurred_at: e.occurred_at.as_deref(),
        payment_id: e.payment_id.as_deref(),
        kind: e.kind.as_deref(),
        reannounced: e.reannounced,
    }
    .serialize(s)
}

/// The outcomes found, newest first.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Log(pub Vec<Entry>);

impl Report for Log {
    fn render(&self) -> Rendered {
        let mut table =
            output::table(["time", "transaction", "user", "status", "amount", "reason"]);
        for e in &self.0 {
            let amount = match (&e.event.amount, &e.event.currency) {
                (Some(a), Some(c)) => format!("{a} {c}"),
                (Some(a), None) => a.to_string(),
                _ => String::new(),
            };
            table.add_row(vec![
                e.event.occurred_at.clone().unwrap_or_default(),
                e.event.transaction_id.clone(),
                e.event.user_id.clone(),
                e.event.status.clone(),
                amount,
                e.event.reason.clone().unwrap_or_default(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// The first window read from the end of each partition; each further
/// window back is twice as long.
const FIRST_WINDOW: i64 = 200;

/// What one partition's reading has reached.
struct Cursor {
    partition: i32,
    low: i64,
    /// The oldest offset read so far (the next window ends here).
    start: i64,
    /// The broker timestamp of the oldest message read so far.
    oldest: Option<i64>,
    /// Nothing older can make the answer.
    done: bool,
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    topic: &str,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    output.emit(&find(&args, kafka, topic, &shutdown).await?)
}

/// The newest `args.limit` outcomes on `topic` that pass the filters.
pub async fn find(
    args: &Args,
    kafka: &KafkaConfig,
    topic: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Log> {
    anyhow::ensure!(
        args.wait.is_finite() && args.wait >= 0.0,
        "--wait must be a number of seconds"
    );
    let since = args
        .since
        .as_deref()
        .map(|text| {
            crate::clock::parse_age(text)
                .map(|age| crate::clock::now_millis().saturating_sub(age))
                .with_context(|| "--since".to_string())
        })
        .transpose()?
        .map(|ms| ms as i64);
    let wait = Duration::from_secs_f64(args.wait);
    let offsets = {
        let (kafka, topic) = (kafka.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let group = format!("payctl-log-{}", uuid::Uuid::new_v4().simple());
            Cluster::connect(&kafka, &group)?.describe(&topic)
        })
        .await??
    };
    let mut cursors: Vec<Cursor> = offsets
        .partitions
        .iter()
        .map(|p| Cursor {
            partition: p.partition,
            low: p.low,
            start: p.high,
            oldest: None,
            done: false,
        })
        .collect();
    let mut found: Vec<Entry> = Vec::new();
    let mut read = 0u64;
    let mut window = FIRST_WINDOW.max(args.limit as i64);
    let mut first = true;
    // Newest first: read each partition backwards, a window at a time, and
    // stop once no older message can be among the newest `limit` matches.
    while cursors.iter().any(|c| !c.done) && !shutdown.is_cancelled() {
        let reads = cursors.iter().filter(|c| !c.done).map(|cursor| {
            let from = (cursor.start - window).max(cursor.low);
            // The first window runs to the end of the partition: the local
            // broker's high watermark undercounts batched records.
            let until = (!first).then_some(cursor.start);
            read_window(
                kafka,
                topic,
                cursor.partition,
                from,
                until,
                wait,
                shutdown,
                args,
            )
        });
        let results = futures::future::join_all(reads).await;
        for (cursor, result) in cursors.iter_mut().filter(|c| !c.done).zip(results) {
            let window_read = result?;
            read += window_read.read;
            cursor.start = (cursor.start - window).max(cursor.low);
            if window_read.oldest.is_some() {
                cursor.oldest = window_read.oldest;
            }
            found.extend(window_read.matches);
        }
        if let Some(since) = since {
            found.retain(|e| e.timestamp.is_some_and(|t| t >= since));
        }
        newest_first(&mut found, args.limit);
        let kth = (found.len() >= args.limit).then(|| found.last().and_then(|e| e.timestamp));
        for cursor in cursors.iter_mut() {
            let older_than_wanted = match (cursor.oldest, kth.flatten()) {
                (Some(oldest), Some(kth)) => oldest <= kth,
                _ => kth.is_some(),
            };
            let before_since = matches!((cursor.oldest, since), (Some(o), Some(s)) if o < s);
            cursor.done |= cursor.start <= cursor.low || older_than_wanted || before_since;
        }
        window = window.saturating_mul(2);
        first = false;
    }
    tracing::info!(
        "read {} of {topic}",
        crate::output::count(read, "message", "messages")
    );
    Ok(Log(found))
}

/// Newest first by broker timestamp (partitions interleave), at most `limit`.
fn newest_first(entries: &mut Vec<Entry>, limit: usize) {
    entries.sort_by_key(|e| std::cmp::Reverse((e.timestamp, e.partition, e.offset)));
    entries.truncate(limit);
}

/// What reading one window of one partition found.
struct WindowRead {
    read: u64,
    oldest: Option<i64>,
    matches: Vec<Entry>,
}

/// Reads `partition` from offset `from` up to `until` (exclusive; to the
/// end when `None`), keeping the events that pass the filters.
#[allow(clippy::too_many_arguments)]
async fn read_window(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: i64,
    until: Option<i64>,
    wait: Duration,
    shutdown: &CancellationToken,
    args: &Args,
) -> anyhow::Result<WindowRead> {
    let mut window = WindowRead {
        read: 0,
        oldest: None,
        matches: Vec::new(),
    };
    if until.is_some_and(|until| until <= from) {
        return Ok(window);
    }
    let scan = Scan {
        topic: topic.to_string(),
        partition: Some(partition),
        start: StartAt::Offset(from),
        group: None,
        follow: false,
        wait,
    };
    scan.run(kafka, shutdown, |message| {
        if until.is_some_and(|until| message.offset() >= until) {
            return Ok(false);
        }
        window.read += 1;
        let timestamp = message.timestamp().to_millis();
        if window.oldest.is_none() {
            window.oldest = timestamp;
        }
        let event = message
            .payload()
            .filter(|_| passes_all(&args.filters, message.payload()))
            .and_then(|p| serde_json::from_slice::<TransactionEvent>(p).ok());
        if let Some(event) = event.filter(|e| {
            args.user.as_ref().is_none_or(|u| *u == e.user_id)
                && args.status.as_ref().is_none_or(|s| *s == e.status)
        }) {
            window.matches.push(Entry {
                event,
                partition: message.partition(),
                offset: message.offset(),
                timestamp,
            });
        }
        Ok(until.is_none_or(|until| message.offset() + 1 < until))
    })
    .await?;
    Ok(window)
}

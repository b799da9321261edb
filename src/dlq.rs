//! `payctl dlq`: what the dead-letter topics hold, and sending letters back
//! to the topics they came from.
//!
//! A dead letter (see `worker::dead_letter_record`) is JSON with the
//! reason, the origin (topic, partition, offset, key) and the original
//! payload, and carries the original message's headers. `dlq redrive`
//! sends the payload and key back to the origin topic with those headers
//! and `payctl-redrive-count` one higher; a worker that fails on it again
//! dead-letters it with that count, and above `--max-redrives` it stays.
//! Which letters were sent is remembered in Redis, one bit per DLQ offset
//! (`dlq:redriven:{topic}:{partition}`), set once the broker has
//! acknowledged the copy: a second re-drive, with any filters, sends
//! nothing twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{Consumer as _, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{KafkaConfig, Topics};
use crate::exit::Interrupted;
use crate::kafka::{enqueue, Outgoing};
use crate::output::{self, Output, Rendered, Report};
use crate::store::Redis;
use crate::topics::filter::{passes_all, Where};

/// The header that counts how often a message was sent back from a DLQ.
pub const REDRIVE_COUNT: &str = "payctl-redrive-count";
/// The header naming the dead letter a re-driven message was copied from.
pub const REDRIVEN_FROM: &str = "payctl-redriven-from";

/// Longest a DLQ may stay silent before the end it had at the start is
/// reached: then the read stops and says where.
const STALL: Duration = Duration::from_secs(15);
/// Letters sent per round (one ack wait and one Redis round trip each).
const CHUNK: usize = 500;

/// A dead letter's value, as `payctl`'s workers write it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Letter {
    pub reason: String,
    pub origin: LetterOrigin,
    pub payload: String,
    #[serde(default)]
    pub payload_truncated: bool,
    pub payload_bytes: usize,
    #[serde(default)]
    pub failed_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LetterOrigin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
    #[serde(default)]
    pub key: Option<String>,
}

/// One record of a DLQ, decoded.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The broker timestamp: when the letter was written (Unix ms).
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, String)>,
    /// The letter, or why the value is not one.
    #[serde(flatten)]
    pub letter: Decoded,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Decoded {
    Letter(Letter),
    NotALetter { not_a_letter: String },
}

impl Record {
    fn from_message(message: &BorrowedMessage<'_>) -> Record {
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let letter = match serde_json::from_slice::<Letter>(message.payload().unwrap_or_default()) {
            Ok(letter) => Decoded::Letter(letter),
            Err(e) => Decoded::NotALetter {
                not_a_letter: format!("not a payctl dead letter: {e}"),
            },
        };
        Record {
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            headers,
            letter,
        }
    }

    fn letter(&self) -> Option<&Letter> {
        match &self.letter {
            Decoded::Letter(letter) => Some(letter),
            Decoded::NotALetter { .. } => None,
        }
    }

    /// The reason, or the note that this is not a letter.
    fn reason(&self) -> &str {
        match &self.letter {
            Decoded::Letter(letter) => &letter.reason,
            Decoded::NotALetter { .. } => "(not a payctl dead letter)",
        }
    }

    fn redrives(&self) -> u32 {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == REDRIVE_COUNT)
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `orders` and `orders.dlq` both name the DLQ `orders.dlq`.
fn dlq_name(topic: &str) -> String {
    if topic.ends_with(".dlq") {
        topic.to_string()
    } else {
        Topics::dlq(topic)
    }
}

/// Reads a DLQ from its start to the end each partition had when the
/// reader was opened, in offset order per partition, a chunk at a time.
/// Letters written meanwhile are left for the next run.
struct Reader {
    topic: String,
    consumer: Option<StreamConsumer<DefaultConsumerContext>>,
    ends: BTreeMap<i32, i64>,
    /// Partitions not yet read to their end.
    pending: HashSet<i32>,
    /// Messages in the DLQ when it was opened.
    total: i64,
}

impl Reader {
    async fn open(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Reader> {
        let name = topic.to_string();
        let offsets = crate::topics::ask(kafka, move |cluster| cluster.describe(&name)).await?;
        let ends = offsets
            .partitions
            .iter()
            .map(|p| (p.partition, p.high))
            .collect();
        let pending: HashSet<i32> = offsets
            .partitions
            .iter()
            .filter(|p| p.high > p.low)
            .map(|p| p.partition)
            .collect();
        let consumer = if pending.is_empty() {
            None
        } else {
            let group = format!("payctl-dlq-{}", uuid::Uuid::new_v4().simple());
            let consumer: StreamConsumer<DefaultConsumerContext> =
                kafka.consumer(&group, DefaultConsumerContext)?;
            let mut tpl = rdkafka::TopicPartitionList::new();
            for &p in &pending {
                tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
            }
            consumer
                .assign(&tpl)
                .context("assigning the DLQ's partitions")?;
            Some(consumer)
        };
        Ok(Reader {
            topic: topic.to_string(),
            consumer,
            ends,
            pending,
            total: offsets.messages(),
        })
    }

    /// Up to `chunk` more records; `None` once every partition is read to
    /// the end it had at the start.
    async fn next_chunk(
        &mut self,
        chunk: usize,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<Record>>> {
        let Some(consumer) = &self.consumer else {
            return Ok(None);
        };
        let mut records = Vec::new();
        while !self.pending.is_empty() && records.len() < chunk {
            let received = tokio::select! {
                _ = shutdown.cancelled() => {
                    return Err(anyhow::Error::new(Interrupted(format!(
                        "interrupted while reading {}", self.topic
                    ))));
                }
                received = tokio::time::timeout(STALL, consumer.recv()) => received,
            };
            let message = match received {
                Err(_) => bail!(
                    "{} gave nothing for {} s before the end it had at the start (partitions {:?} not read to the end)",
                    self.topic,
                    STALL.as_secs(),
                    self.pending
                ),
                Ok(Err(e)) => {
                    return Err(anyhow::Error::new(e).context(format!("reading {}", self.topic)))
                }
                Ok(Ok(message)) => message,
            };
            let partition = message.partition();
            let end = self.ends.get(&partition).copied().unwrap_or(0);
            if message.offset() >= end {
                // Written after the start: the next run's.
                self.pending.remove(&partition);
                continue;
            }
            records.push(Record::from_message(&message));
            if message.offset() + 1 >= end {
                self.pending.remove(&partition);
            }
        }
        Ok((!records.is_empty()).then_some(records))
    }
}

// ---------------------------------------------------------------- list

/// Count each DLQ's letters by reason, with the oldest and newest.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl dlq list                      # every topic ending in .dlq
  payctl dlq list money_transfers      # money_transfers.dlq
  payctl dlq list --output json | jq '.[] | select(.total > 0)'")]
pub struct ListArgs {
    /// A DLQ or the topic whose DLQ to count (default: every *.dlq topic).
    pub topic: Option<String>,
}

#[derive(Debug, Serialize)]
struct DlqCounts {
    topic: String,
    total: u64,
    reasons: Vec<ReasonCount>,
}

#[derive(Debug, Serialize)]
struct ReasonCount {
    reason: String,
    count: u64,
    /// When the oldest and newest of these were dead-lettered (RFC 3339).
    oldest: Option<String>,
    newest: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct DlqList(Vec<DlqCounts>);

impl Report for DlqList {
    fn render(&self) -> Rendered {
        let mut table = output::table(["dlq", "reason", "count", "oldest", "newest"]);
        for dlq in &self.0 {
            if dlq.reasons.is_empty() {
                table.add_row(vec![dlq.topic.clone(), "(empty)".into(), "0".into()]);
            }
            for r in &dlq.reasons {
                table.add_row(vec![
                    dlq.topic.clone(),
                    r.reason.clone(),
                    r.count.to_string(),
                    r.oldest.clone().unwrap_or_default(),
                    r.newest.clone().unwrap_or_default(),
                ]);
            }
        }
        Rendered::Table(table)
    }
}

fn time_text(ms: Option<i64>) -> Option<String> {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .map(crate::clock::rfc3339)
}

pub async fn list(
    args: ListArgs,
    kafka: &KafkaConfig,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topics = match args.topic {
        Some(topic) => vec![dlq_name(&topic)],
        None => crate::topics::ask(kafka, |cluster| cluster.topic_names())
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.ends_with(".dlq"))
            .collect(),
    };
    let mut all = Vec::with_capacity(topics.len());
    for topic in topics {
        // reason → (count, oldest, newest)
        let mut by_reason: HashMap<String, (u64, Option<i64>, Option<i64>)> = HashMap::new();
        let mut total = 0u64;
        let mut reader = Reader::open(kafka, &topic).await?;
        while let Some(records) = reader.next_chunk(CHUNK, &shutdown).await? {
            for record in records {
                total += 1;
                let entry = by_reason
                    .entry(record.reason().to_string())
                    .or_insert((0, None, None));
                entry.0 += 1;
                if let Some(t) = record.timestamp {
                    entry.1 = Some(entry.1.map_or(t, |o| o.min(t)));
                    entry.2 = Some(entry.2.map_or(t, |n| n.max(t)));
                }
            }
        }
        let mut reasons: Vec<ReasonCount> = by_reason
            .into_iter()
            .map(|(reason, (count, oldest, newest))| ReasonCount {
                reason,
                count,
                oldest: time_text(oldest),
                newest: time_text(newest),
            })
            .collect();
        reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        all.push(DlqCounts {
            topic,
            total,
            reasons,
        });
    }
    output.emit(&DlqList(all))
}

// ---------------------------------------------------------------- filters

/// Which letters a command looks at.
#[derive(Debug, Clone, clap::Args)]
pub struct LetterFilters {
    /// Only letters whose reason matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub reason: Option<regex::Regex>,
    /// Only letters whose original payload passes: FIELD=VALUE,
    /// FIELD!=VALUE or FIELD~REGEX (repeatable; all must pass).
    #[arg(long = "where", value_name = "FILTER")]
    pub filters: Vec<Where>,
    /// Only letters dead-lettered at or after this time: RFC 3339
    /// (2026-11-20T10:00:00Z) or an age (2h: two hours ago).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only letters dead-lettered before this time (as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
}

/// RFC 3339, or an age before now.
fn parse_time(text: &str) -> Result<i64, String> {
    let ms = if text.contains('T') {
        crate::clock::parse_rfc3339(text)
    } else {
        crate::clock::parse_instant(&format!("-{}", text.trim_start_matches('-')))
    };
    ms.map(|ms| ms as i64).map_err(|e| e.to_string())
}

impl LetterFilters {
    fn pass(&self, record: &Record) -> bool {
        let in_time = |bound: Option<i64>, after: bool| {
            bound.is_none_or(|b| {
                record
                    .timestamp
                    .is_some_and(|t| if after { t >= b } else { t < b })
            })
        };
        if !in_time(self.since, true) || !in_time(self.until, false) {
            return false;
        }
        if self
            .reason
            .as_ref()
            .is_some_and(|r| !r.is_match(record.reason()))
        {
            return false;
        }
        if self.filters.is_empty() {
            return true;
        }
        record
            .letter()
            .is_some_and(|l| passes_all(&self.filters, Some(l.payload.as_bytes())))
    }
}

// ---------------------------------------------------------------- show

/// Print dead letters, oldest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl dlq show money_transfers
  payctl dlq show payments.dlq --reason 'amount' -n 5
  payctl dlq show money_transfers --where sender_id=alice --output json | jq '.[].payload'")]
pub struct ShowArgs {
    /// A DLQ or the topic whose DLQ to show.
    pub topic: String,
    #[command(flatten)]
    pub filters: LetterFilters,
    /// At most this many letters.
    #[arg(short = 'n', long = "count", default_value_t = 20)]
    pub count: usize,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Shown(Vec<Record>);

impl Report for Shown {
    fn render(&self) -> Rendered {
        let mut table =
            output::table(["at", "dead-lettered", "reason", "origin", "key", "payload"]);
        for r in &self.0 {
            let (origin, key, payload) = match r.letter() {
                Some(l) => (
                    format!(
                        "{}/{}@{}",
                        l.origin.topic, l.origin.partition, l.origin.offset
                    ),
                    l.origin.key.clone().unwrap_or_default(),
                    cut(&l.payload, 80),
                ),
                None => Default::default(),
            };
            table.add_row(vec![
                format!("{}@{}", r.partition, r.offset),
                time_text(r.timestamp).unwrap_or_default(),
                r.reason().to_string(),
                origin,
                key,
                payload,
            ]);
        }
        Rendered::Table(table)
    }
}

fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

pub async fn show(
    args: ShowArgs,
    kafka: &KafkaConfig,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topic = dlq_name(&args.topic);
    let mut shown = Vec::new();
    let mut reader = Reader::open(kafka, &topic).await?;
    while shown.len() < args.count {
        let Some(records) = reader.next_chunk(CHUNK, &shutdown).await? else {
            break;
        };
        shown.extend(
            records
                .into_iter()
                .filter(|r| args.filters.pass(r))
                .take(args.count - shown.len()),
        );
    }
    output.emit(&Shown(shown))
}

// ---------------------------------------------------------------- redrive

/// Send dead letters back to the topics they came from.
///
/// Each letter's original payload and key go back to its origin topic,
/// with the original headers and `payctl-redrive-count` one higher. Reads
/// the DLQ to the end it has when the command starts. A letter already
/// re-driven (by any earlier run), re-driven --max-redrives times already,
/// cut short in the DLQ, or whose origin topic is gone, stays.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl dlq redrive money_transfers --dry-run
  payctl dlq redrive money_transfers --reason 'unknown account' --since 2h
  payctl dlq redrive payments.dlq --where user_id=alice --rate 100
  payctl dlq redrive money_transfers --output json | jq .skipped")]
pub struct RedriveArgs {
    /// A DLQ or the topic whose DLQ to re-drive.
    pub topic: String,
    #[command(flatten)]
    pub filters: LetterFilters,
    /// Say what would be sent, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many letters per second (100 or 100/s).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<u32>,
    /// A letter already sent back this many times stays in the DLQ.
    #[arg(long, default_value_t = 3)]
    pub max_redrives: u32,
}

fn parse_rate(text: &str) -> Result<u32, String> {
    text.trim()
        .trim_end_matches("/s")
        .parse::<u32>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text:?}: expected a rate like 100 or 100/s"))
}

/// What a re-drive did (or, with --dry-run, would do).
#[derive(Debug, Default, Serialize)]
pub struct Redrive {
    dlq: String,
    dry_run: bool,
    /// Letters read (the DLQ up to its end at the start).
    read: u64,
    /// Sent back (with --dry-run: would be).
    sent: u64,
    /// Sent, by reason.
    sent_by_reason: BTreeMap<String, u64>,
    /// Kept in the DLQ, by cause.
    skipped: BTreeMap<&'static str, u64>,
    /// Sent, by origin topic.
    sent_to: BTreeMap<String, u64>,
}

impl Report for Redrive {
    fn render(&self) -> Rendered {
        let verb = if self.dry_run { "would send" } else { "sent" };
        let mut table = output::table(["", "count"]);
        table.add_row(vec![
            format!("read from {}", self.dlq),
            self.read.to_string(),
        ]);
        table.add_row(vec![verb.to_string(), self.sent.to_string()]);
        for (topic, n) in &self.sent_to {
            table.add_row(vec![format!("  to {topic}"), n.to_string()]);
        }
        for (reason, n) in &self.sent_by_reason {
            table.add_row(vec![
                format!("  reason: {}", cut(reason, 70)),
                n.to_string(),
            ]);
        }
        for (cause, n) in &self.skipped {
            table.add_row(vec![format!("kept: {cause}"), n.to_string()]);
        }
        Rendered::Table(table)
    }
}

const SKIP_FILTERED: &str = "filtered out";
const SKIP_DONE: &str = "already re-driven";
const SKIP_MAX: &str = "re-driven --max-redrives times already";
const SKIP_CUT: &str = "payload cut short in the letter";
const SKIP_LOSSY: &str = "payload was not UTF-8 (the letter holds a lossy copy)";
const SKIP_ALIEN: &str = "not a payctl dead letter";
const SKIP_NO_TOPIC: &str = "origin topic not on the broker";

/// The bitmap of letters of one DLQ partition already sent back.
fn redriven_key(dlq: &str, partition: i32) -> String {
    format!("dlq:redriven:{dlq}:{partition}")
}

pub async fn redrive(
    args: RedriveArgs,
    kafka: &KafkaConfig,
    redis: &mut Redis,
    producer: &FutureProducer,
    output: Output,
    progress: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dlq = dlq_name(&args.topic);
    let topics: HashSet<String> = crate::topics::ask(kafka, |cluster| cluster.topic_names())
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    if !topics.contains(&dlq) {
        bail!("no topic {dlq:?} on the broker");
    }
    let mut reader = Reader::open(kafka, &dlq).await?;
    let bar = output::progress_bar(reader.total.max(0) as u64, progress);
    let mut summary = Redrive {
        dlq: dlq.clone(),
        dry_run: args.dry_run,
        ..Redrive::default()
    };
    let started = Instant::now();
    let result = async {
        while let Some(records) = reader.next_chunk(CHUNK, &shutdown).await? {
            summary.read += records.len() as u64;
            bar.inc(records.len() as u64);
            let done = already_redriven(redis, &dlq, &records).await?;
            let mut chosen = Vec::new();
            for (record, done) in records.into_iter().zip(done) {
                match skip_cause(&args, &topics, &record, done) {
                    Some(cause) => *summary.skipped.entry(cause).or_default() += 1,
                    None => chosen.push(record),
                }
            }
            let (sent, failure) = if args.dry_run {
                (vec![true; chosen.len()], None)
            } else {
                send_back(redis, producer, &dlq, &chosen).await?
            };
            for (record, _) in chosen.iter().zip(sent).filter(|(_, sent)| *sent) {
                let letter = record.letter().expect("chosen records are letters");
                summary.sent += 1;
                *summary
                    .sent_by_reason
                    .entry(letter.reason.clone())
                    .or_default() += 1;
                *summary
                    .sent_to
                    .entry(letter.origin.topic.clone())
                    .or_default() += 1;
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
            if let (Some(rate), false) = (args.rate, args.dry_run) {
                let due = started + Duration::from_secs_f64(summary.sent as f64 / f64::from(rate));
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    bar.finish_and_clear();
    output.emit(&summary)?;
    result
}

/// Why a record stays in the DLQ, if it does.
fn skip_cause(
    args: &RedriveArgs,
    topics: &HashSet<String>,
    record: &Record,
    done: bool,
) -> Option<&'static str> {
    if !args.filters.pass(record) {
        return Some(SKIP_FILTERED);
    }
    if done {
        return Some(SKIP_DONE);
    }
    let Some(letter) = record.letter() else {
        return Some(SKIP_ALIEN);
    };
    if record.redrives() >= args.max_redrives {
        Some(SKIP_MAX)
    } else if letter.payload_truncated {
        Some(SKIP_CUT)
    } else if letter.payload.len() != letter.payload_bytes {
        Some(SKIP_LOSSY)
    } else if !topics.contains(&letter.origin.topic) {
        Some(SKIP_NO_TOPIC)
    } else {
        None
    }
}

/// Whether each record's bit is set: sent back by an earlier run.
async fn already_redriven(
    redis: &mut Redis,
    dlq: &str,
    records: &[Record],
) -> anyhow::Result<Vec<bool>> {
    let mut pipe = redis::pipe();
    for r in records {
        let offset = u64::try_from(r.offset).context("a negative DLQ offset")?;
        pipe.getbit(redriven_key(dlq, r.partition), offset as usize);
    }
    pipe.query_async(redis)
        .await
        .context("reading which letters were re-driven before")
}

/// Sends `records` back (with --rate, the caller paces the chunks), waits
/// for every ack, then marks the acknowledged ones sent. Returns which were
/// sent and the first failure. A crash between the ack and the mark sends a
/// letter twice on the next run, never zero times.
async fn send_back(
    redis: &mut Redis,
    producer: &FutureProducer,
    dlq: &str,
    records: &[Record],
) -> anyhow::Result<(Vec<bool>, Option<anyhow::Error>)> {
    if records.is_empty() {
        return Ok((Vec::new(), None));
    }
    let outgoing: Vec<Outgoing> = records
        .iter()
        .map(|record| {
            let letter = record.letter().expect("chosen records are letters");
            let mut headers: Vec<(String, String)> = record
                .headers
                .iter()
                .filter(|(k, _)| k != REDRIVE_COUNT && k != REDRIVEN_FROM)
                .cloned()
                .collect();
            headers.push((REDRIVE_COUNT.into(), (record.redrives() + 1).to_string()));
            headers.push((
                REDRIVEN_FROM.into(),
                format!("{dlq}/{}@{}", record.partition, record.offset),
            ));
            Outgoing {
                topic: letter.origin.topic.clone(),
                key: letter.origin.key.clone(),
                payload: letter.payload.clone().into_bytes(),
                headers,
            }
        })
        .collect();
    let results = enqueue(producer, &outgoing).await.wait_each().await;
    let mut pipe = redis::pipe();
    let mut sent = Vec::with_capacity(records.len());
    let mut first_failure = None;
    for (record, result) in records.iter().zip(results) {
        sent.push(result.is_ok());
        match result {
            Ok(()) => {
                pipe.setbit(
                    redriven_key(dlq, record.partition),
                    record.offset as usize,
                    true,
                )
                .ignore();
            }
            Err(e) => {
                first_failure.get_or_insert(e.context(format!(
                    "sending back {dlq}/{}@{}",
                    record.partition, record.offset
                )));
            }
        }
    }
    pipe.query_async::<()>(redis)
        .await
        .context("noting which letters were sent back")?;
    Ok((sent, first_failure))
}

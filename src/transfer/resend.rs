//! `payctl transfer resend`: publish again the transfers that are stored and
//! still `initiated` but whose message may never reach `transfer process`:
//! a crash between the write and the broker's ack, or a broker that lost its
//! log (the local Tansu keeps topics in memory).
//!
//! Candidates come from two indexes, never from all history: every id in
//! `transfers:unpublished`, and the ids in `transfers:pending` (undecided
//! transfers by creation time) older than `--older-than`. The RESEND script
//! reads each record again: only one still `initiated` is sent, as stored,
//! and index entries whose record is decided or gone are dropped. A resent
//! transfer leaves `transfers:unpublished` only after its ack. Sending twice
//! is safe: `transfer process` counts a second copy of a processed transfer
//! as a duplicate and changes nothing.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Instant;

use anyhow::{bail, Context as _};
use rdkafka::producer::FutureProducer;
use serde::Serialize;

use crate::kafka::{produce_each, Outgoing};
use crate::output::{self, Output, Rendered, Report};
use crate::store::{keys, query_each, run_pipeline, Redis, Script};
use crate::transfer::Transfer;

/// Publish again transfers still initiated whose message may be lost.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transfer resend --dry-run        # list what would be sent; change nothing
  payctl transfer resend                  # unpublished ones, and undecided ones over 60 s old
  payctl transfer resend --older-than 0   # every undecided one: the broker lost its log
  payctl transfer resend --output json | jq .sent")]
pub struct Args {
    /// Resend undecided transfers initiated at least this many seconds ago.
    /// Transfers left in `transfers:unpublished` are resent whatever their age.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub older_than: u64,
    /// List the transfers that would be resent; send nothing, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

static RESEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("resend.lua")));

/// Transfers read, and sent, per round trip.
const CHUNK: usize = 1000;

/// A transfer that is still initiated and due to be sent again.
#[derive(Debug, Serialize)]
pub struct Candidate {
    #[serde(flatten, serialize_with = "super::serialize_for_output")]
    pub transfer: Transfer,
    /// Stored but never acknowledged by the broker.
    pub unpublished: bool,
}

/// What `--dry-run` prints.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct CandidateList(pub Vec<Candidate>);

impl Report for CandidateList {
    fn render(&self) -> Rendered {
        let mut table = output::table([
            "transfer",
            "from",
            "to",
            "amount",
            "currency",
            "created_at",
            "unpublished",
        ]);
        for Candidate {
            transfer: t,
            unpublished,
        } in &self.0
        {
            table.add_row(vec![
                t.transfer_id.clone(),
                t.sender_id.clone(),
                t.receiver_id.clone(),
                t.amount.to_string(),
                t.currency.clone().unwrap_or_default(),
                t.created_at.clone().unwrap_or_default(),
                if *unpublished { "yes" } else { "no" }.to_string(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// What a resend did.
#[derive(Debug, Serialize)]
pub struct ResendSummary {
    /// Ids taken from the indexes.
    pub found: usize,
    /// Published again and acknowledged.
    pub sent: usize,
    /// Decided or gone (their index entries dropped), or unreadable.
    pub skipped: usize,
    /// Not acknowledged by the broker; still due.
    pub failed: usize,
    /// Why it stopped early, when it did.
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

impl Report for ResendSummary {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("found", self.found.to_string()),
            ("sent", self.sent.to_string()),
            ("skipped", self.skipped.to_string()),
            ("failed", self.failed.to_string()),
            ("seconds", format!("{:.2}", self.elapsed_ms as f64 / 1000.0)),
        ];
        if let Some(error) = &self.error {
            rows.push(("stopped by", error.clone()));
        }
        Rendered::Table(output::record_table(rows))
    }
}

/// One id from the indexes.
struct Found {
    id: String,
    /// Creation ms from `transfers:pending`, when it is there.
    created_ms: Option<f64>,
    unpublished: bool,
}

/// The ids due: every unpublished one, and pending ones created at or
/// before `cutoff_ms`; oldest first. SCAN cursors, so entries removed
/// meanwhile (by `transfer process`) never make others be missed.
async fn find(redis: &mut Redis, cutoff_ms: u64) -> anyhow::Result<Vec<Found>> {
    let mut found: HashMap<String, Found> = HashMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, page): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
            .arg(keys::PENDING_TRANSFERS)
            .arg(cursor)
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(redis)
            .await
            .with_context(|| format!("scanning {}", keys::PENDING_TRANSFERS))?;
        for (id, score) in page {
            if score <= cutoff_ms as f64 {
                found.insert(
                    id.clone(),
                    Found {
                        id,
                        created_ms: Some(score),
                        unpublished: false,
                    },
                );
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(keys::UNPUBLISHED_TRANSFERS)
            .arg(cursor)
            .arg("COUNT")
            .arg(CHUNK)
            .query_async(redis)
            .await
            .with_context(|| format!("scanning {}", keys::UNPUBLISHED_TRANSFERS))?;
        for id in page {
            found
                .entry(id.clone())
                .or_insert(Found {
                    id,
                    created_ms: None,
                    unpublished: true,
                })
                .unpublished = true;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut found: Vec<Found> = found.into_values().collect();
    found.sort_by(|a, b| {
        let at = |f: &Found| f.created_ms.unwrap_or(0.0);
        at(a).total_cmp(&at(b)).then_with(|| a.id.cmp(&b.id))
    });
    Ok(found)
}

/// Reads records without changing anything: the `--dry-run` half.
async fn list(redis: &mut Redis, found: &[Found]) -> anyhow::Result<Vec<Candidate>> {
    let mut candidates = Vec::new();
    for chunk in found.chunks(CHUNK) {
        let reads = chunk
            .iter()
            .map(|f| redis::cmd("GET").arg(keys::transfer(&f.id)).to_owned())
            .collect();
        let records: Vec<Option<Vec<u8>>> = query_each(redis, reads)
            .await
            .context("reading transfers")?
            .into_iter()
            .collect::<Result<_, _>>()
            .context("reading transfers")?;
        for (f, record) in chunk.iter().zip(records) {
            let Some(record) = record else { continue };
            match parse(&f.id, &record) {
                Ok(transfer) if transfer.status == super::TransferStatus::Initiated => candidates
                    .push(Candidate {
                        transfer,
                        unpublished: f.unpublished,
                    }),
                Ok(_) => {}
                Err(e) => tracing::warn!("{e:#}; not listed"),
            }
        }
    }
    Ok(candidates)
}

fn parse(id: &str, record: &[u8]) -> anyhow::Result<Transfer> {
    let json = std::str::from_utf8(record)
        .with_context(|| format!("transfer:{id} holds bytes that are not UTF-8"))?;
    super::parse_stored(id, json)
}

/// Claims, publishes and settles one chunk; adds what happened to `summary`.
/// Returns the first publish failure, after the chunk is settled.
async fn resend_chunk(
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    chunk: &[Found],
    summary: &mut ResendSummary,
) -> anyhow::Result<Option<String>> {
    let replies = if redis.is_cluster() {
        resend_across_slots(redis, chunk).await?
    } else {
        resend_here(redis, chunk).await?
    };
    let mut due = Vec::new();
    let mut outgoing = Vec::new();
    for (f, reply) in chunk.iter().zip(replies) {
        let answer = reply.first().map(Vec::as_slice).unwrap_or_default();
        let detail = reply
            .get(1)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        match answer {
            b"send" => match parse(&f.id, reply[1].as_slice()) {
                Ok(transfer) => {
                    outgoing.push(Outgoing {
                        topic: topic.to_string(),
                        key: Some(transfer.sender_id),
                        payload: reply[1].clone(),
                        headers: Vec::new(),
                    });
                    due.push(&f.id);
                }
                Err(e) => {
                    tracing::warn!("{e:#}; not resent");
                    summary.skipped += 1;
                }
            },
            b"decided" | b"gone" => summary.skipped += 1,
            _ => {
                tracing::warn!(transfer = %f.id, "{detail}; not resent");
                summary.skipped += 1;
            }
        }
    }

    let mut first_failure = None;
    let mut settle = Vec::new();
    let cluster = redis.is_cluster();
    for (id, ack) in due.into_iter().zip(produce_each(producer, &outgoing).await) {
        match ack {
            Ok(()) => {
                summary.sent += 1;
                if cluster {
                    settle.extend(super::saga::published_commands(id));
                } else {
                    settle.push(
                        redis::cmd("SREM")
                            .arg(keys::UNPUBLISHED_TRANSFERS)
                            .arg(id)
                            .to_owned(),
                    );
                    settle.push(
                        redis::cmd("SREM")
                            .arg(keys::ADOPTED_TRANSFERS)
                            .arg(id)
                            .to_owned(),
                    );
                }
            }
            Err(e) => {
                summary.failed += 1;
                first_failure.get_or_insert_with(|| format!("transfer {id}: {e:#}"));
            }
        }
    }
    for answer in query_each::<redis::Value>(redis, settle)
        .await
        .context("recording which transfers were published")?
    {
        answer.context("recording which transfers were published")?;
    }
    Ok(first_failure)
}

/// The RESEND step of every transfer of `chunk` on one server, pipelined.
async fn resend_here(redis: &mut Redis, chunk: &[Found]) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
    let mut claim = redis::pipe();
    for f in chunk {
        let record_key = keys::transfer(&f.id);
        let mut call = RESEND.call(&[
            &record_key,
            keys::PENDING_TRANSFERS,
            keys::UNPUBLISHED_TRANSFERS,
            keys::ADOPTED_TRANSFERS,
        ]);
        call.arg(&f.id);
        claim.add_command(call);
    }
    run_pipeline(&claim, redis)
        .await
        .context("reading the transfers to resend")
}

/// The same on a cluster: the step in each record's slot, many in flight,
/// then the indices of decided and vanished transfers, each in its own.
async fn resend_across_slots(
    redis: &mut Redis,
    chunk: &[Found],
) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
    let calls = chunk.iter().map(|f| super::saga::resend(&f.id)).collect();
    let replies = crate::store::invoke_each::<Vec<Vec<u8>>>(redis, calls)
        .await
        .context("reading the transfers to resend")?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("reading the transfers to resend")?;
    let forget = chunk
        .iter()
        .zip(&replies)
        .filter(|(_, reply)| matches!(reply.first().map(Vec::as_slice), Some(b"decided" | b"gone")))
        .flat_map(|(f, _)| super::saga::forget_commands(&f.id))
        .collect();
    for answer in query_each::<i64>(redis, forget)
        .await
        .context("dropping decided transfers from the indices")?
    {
        answer.context("dropping decided transfers from the indices")?;
    }
    Ok(replies)
}

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    output: Output,
    show_progress: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let cutoff_ms = crate::clock::now_millis().saturating_sub(args.older_than.saturating_mul(1000));
    let found = find(redis, cutoff_ms).await?;
    if args.dry_run {
        return output.emit(&CandidateList(list(redis, &found).await?));
    }

    RESEND.load(redis).await?;
    let mut summary = ResendSummary {
        found: found.len(),
        sent: 0,
        skipped: 0,
        failed: 0,
        error: None,
        elapsed_ms: 0,
    };
    let progress = output::progress_bar(found.len() as u64, show_progress);
    for chunk in found.chunks(CHUNK) {
        let failure = resend_chunk(redis, producer, topic, chunk, &mut summary).await;
        progress.inc(chunk.len() as u64);
        match failure {
            Ok(None) => {}
            // The broker is failing: the rest would wait out the same timeout.
            Ok(Some(error)) => {
                summary.error = Some(error);
                break;
            }
            Err(e) => {
                summary.error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    progress.finish_and_clear();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    output.emit(&summary)?;
    if let Some(error) = &summary.error {
        let done = summary.sent + summary.skipped;
        bail!(
            "stopped after {done} of {} transfers ({} sent): {error}; run it again to resend the rest",
            summary.found,
            summary.sent
        );
    }
    Ok(())
}

//! `payctl payments process`: the subscription pipeline's processor, as a batch job.
//!
//! Each pass:
//! 1. announces processed payments whose event was not yet acknowledged;
//! 2. claims payments for the processor, one charge per subscription
//!    (`claim.lua`): a payment goes on only if its user has no other
//!    payment with the processor and no active (paid) subscription; a
//!    refund only if the subscription is active and no other refund of it
//!    is with the processor. The rest become `duplicated`, whichever pass
//!    saved them. Within a pass a user's latest request is tried first;
//!    across passes the one claimed first wins;
//! 3. sends every claimed payment to the processor (retrying passing
//!    failures; one that still has no answer stays `in_processing` with
//!    payment status `unknown`, keeps its claim, and is sent again on the
//!    next pass). A processor that cannot work as configured (a
//!    certificate not trusted, a redirect) is never retried: a request
//!    that charges nothing finds it before any payment is claimed, and if
//!    a call still meets it, no further call starts and the run stops;
//! 4. stores each answer, atomically with its subscription change, its
//!    place in the announce queue and the release of its claim
//!    (`answer.lua`), then produces its outcome event to
//!    `payment_transactions` and takes it off the queue once acknowledged.
//!
//! One run at a time: a run holds `payments:process-lock`, renewed in the
//! background. A run that loses it (it expired, or could not be renewed)
//! makes no further processor call, stores the answers it has, and exits
//! non-zero.
//!
//! The payment becomes `completed` when `notify consume` has written the
//! user's notification for that event.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt;
use rdkafka::producer::FutureProducer;
use redis::AsyncCommands;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::seconds_from;
use crate::events::TransactionEvent;
use crate::exit::PartlyDone;
use crate::kafka::produce_each;
use crate::money::Currency;
use crate::output::{self, Output, Rendered, Report};
use crate::payments::processor::{Answer, Failure, HttpProcessor, Processor, SimulatorArgs};
use crate::payments::slots;
use crate::payments::{check_id, check_plan, keys, Payment, PaymentStatus, ProcessingStatus};
use crate::store::{run_pipeline, Redis, Script};

/// Send saved payments to the processor, one charge per subscription.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl payments process                                   # one pass, built-in simulator
  payctl payments process --seed 42 --accept-rate 0.7 --decline-rate 0.2 --latency-ms 20
  payctl payments process --processor-url http://127.0.0.1:5001/execute_transaction --timeout 2 --retries 3
  payctl payments process --processor-url https://pay.internal/charge --processor-ca-file ca.pem
  payctl payments process --until-idle 10                   # keep going until nothing new for 10 s

A payment goes to the processor only when its user has no other payment
with the processor and no paid, active subscription; a refund only when the
subscription is active and no other refund of it is with the processor.
Later requests become `duplicated`, with the reason in their detail.")]
pub struct Args {
    /// POST payments to this http:// or https:// URL instead of using the
    /// simulator (HTTP_PROXY, HTTPS_PROXY and NO_PROXY apply).
    #[arg(long, env = "PAYCTL_PROCESSOR_URL", hide_env_values = true)]
    pub processor_url: Option<String>,
    /// PEM file of CA certificates to trust for the processor, in addition
    /// to the system's roots.
    #[arg(long, env = "PAYCTL_PROCESSOR_CA_FILE", value_name = "PATH")]
    pub processor_ca_file: Option<std::path::PathBuf>,
    /// Seconds to wait for one processor answer (0.001 to one year).
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Further attempts after a timeout or 5xx, with backoff (at most 100).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    #[command(flatten)]
    pub simulator: SimulatorArgs,
    /// Processor calls in flight at once (1 to 1024).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Keep taking new payments until none has come for this many seconds
    /// (at most one year).
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<f64>,
    /// Seconds the process lock lives unless renewed; it is renewed every
    /// quarter of that, and a run that cannot renew it for half of it stops
    /// (1 to 86400). A crashed run's lock blocks the next run this long.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub lock_ttl: u64,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct ProcessSummary {
    /// `new` payments sent on to the processor.
    pub claimed: u64,
    /// Requests not sent: their user already has a payment with the
    /// processor or a paid subscription (a refund: none to refund).
    pub duplicated: u64,
    /// Processor calls made, retries included.
    pub calls: u64,
    /// Answers by payment status.
    pub answered: BTreeMap<&'static str, u64>,
    /// Payments with no answer yet: still `in_processing`, status `unknown`;
    /// the next run sends them again.
    pub unanswered: u64,
    /// Outcome events acknowledged by the broker.
    pub announced: u64,
    /// Stored records left alone because they cannot be used safely
    /// (unreadable JSON, an id that fails the checks); see the log.
    pub invalid: u64,
    pub elapsed_ms: u64,
}

impl Report for ProcessSummary {
    fn render(&self) -> Rendered {
        let mut rows = vec![
            ("claimed", self.claimed.to_string()),
            ("duplicated", self.duplicated.to_string()),
            ("calls", self.calls.to_string()),
        ];
        rows.extend(self.answered.iter().map(|(k, v)| (*k, v.to_string())));
        rows.push(("unanswered", self.unanswered.to_string()));
        rows.push(("announced", self.announced.to_string()));
        if self.invalid > 0 {
            rows.push(("invalid", self.invalid.to_string()));
        }
        rows.push(("seconds", format!("{:.2}", self.elapsed_ms as f64 / 1000.0)));
        Rendered::Table(output::record_table(rows))
    }
}

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim.lua")));
static ANSWER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&[include_str!("subscription.lua"), include_str!("answer.lua")].concat())
});
static RENEW_LOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lock_renew.lua")));
static RELEASE_LOCK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lock_release.lua")));

const LOCK_KEY: &str = "payments:process-lock";

/// Payments claimed, sent, answered and announced together: one pipeline
/// of claims, one of answers and one wait for acks per chunk.
/// A chunk holds whole users (all of a user's payments in the pass), so
/// it may be larger when one user has very many.
const CHUNK: usize = 2000;

/// The most `--retries`.
const MAX_RETRIES: u32 = 100;
/// The most `--concurrency`.
const MAX_CONCURRENCY: usize = 1024;
/// The longest `--lock-ttl`: one day.
const MAX_LOCK_TTL_SECS: u64 = 86_400;

/// The run's validated settings: flags are checked once, here.
struct Settings {
    processor: Processor,
    retries: u32,
    concurrency: usize,
    until_idle: Option<Duration>,
    lock_ttl: Duration,
}

impl Settings {
    fn from_args(args: &Args) -> anyhow::Result<Settings> {
        let timeout = seconds_from("--timeout", args.timeout, 0.001)?;
        let until_idle = args
            .until_idle
            .map(|secs| seconds_from("--until-idle", secs, 0.0))
            .transpose()?;
        if args.retries > MAX_RETRIES {
            bail!(
                "--retries must be at most {MAX_RETRIES}, got {}",
                args.retries
            );
        }
        if !(1..=MAX_CONCURRENCY).contains(&args.concurrency) {
            bail!(
                "--concurrency must be from 1 to {MAX_CONCURRENCY}, got {}",
                args.concurrency
            );
        }
        if !(1..=MAX_LOCK_TTL_SECS).contains(&args.lock_ttl) {
            bail!(
                "--lock-ttl must be from 1 to {MAX_LOCK_TTL_SECS} seconds, got {}",
                args.lock_ttl
            );
        }
        let processor = match &args.processor_url {
            Some(url) => Processor::Http(HttpProcessor::new(
                url,
                args.processor_ca_file.as_deref(),
                timeout,
            )?),
            None if args.processor_ca_file.is_some() => {
                bail!("--processor-ca-file is for --processor-url: the simulator uses no TLS")
            }
            None => Processor::Simulator(args.simulator.simulator()?),
        };
        Ok(Settings {
            processor,
            retries: args.retries,
            concurrency: args.concurrency,
            until_idle,
            lock_ttl: Duration::from_secs(args.lock_ttl),
        })
    }
}

/// Why a stored record cannot be used, or the record.
///
/// Ids from Redis are checked like ids from the topic: another service may
/// have written the record, and the ids go into keys and HTTP headers.
fn usable(id: &str, json: &str) -> Result<Payment, String> {
    let payment: Payment =
        serde_json::from_str(json).map_err(|e| format!("not a payment record: {e}"))?;
    if payment.payment_id != id {
        return Err("its payment_id differs from its key".into());
    }
    check_id("payment_id", &payment.payment_id)?;
    check_id("user_id", &payment.user_id)?;
    check_plan("plan", &payment.plan)?;
    Currency::parse(&payment.currency).map_err(|e| e.to_string())?;
    Ok(payment)
}

/// A payment waiting to be claimed: as much of it as ordering needs. The
/// record itself is read again, a chunk at a time, when it is claimed, so
/// a run holds a few fields per waiting payment, not its record.
#[derive(Debug)]
struct Candidate {
    id: String,
    user: String,
    requested_ms: u64,
    /// `new`, or `in_processing` for one sent before and still unanswered.
    from: ProcessingStatus,
}

/// The order payments are claimed in: user by user (a user's payments are
/// never split between chunks, so all of them are claimed before any of
/// them is answered, as in one pass); within a user, those sent before
/// and unanswered first (they confirm their claim), then the latest
/// request first.
fn claim_order(candidates: &mut [Candidate]) {
    candidates.sort_unstable_by(|a, b| {
        let waiting = |c: &Candidate| c.from != ProcessingStatus::InProcessing;
        (&a.user, waiting(a))
            .cmp(&(&b.user, waiting(b)))
            .then_with(|| (b.requested_ms, &b.id).cmp(&(a.requested_ms, &a.id)))
    });
}

/// Cuts ordered candidates into chunks of about `size`, never splitting a user.
fn chunks(candidates: &[Candidate], size: usize) -> Vec<&[Candidate]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for at in 1..=candidates.len() {
        let user_ends = at == candidates.len() || candidates[at].user != candidates[at - 1].user;
        if at - start >= size && user_ends || at == candidates.len() {
            chunks.push(&candidates[start..at]);
            start = at;
        }
    }
    chunks
}

/// One run's state across passes.
struct Pass<'a> {
    redis: &'a mut Redis,
    summary: ProcessSummary,
    /// Records skipped as unusable (warned about once each).
    invalid: HashSet<String>,
    /// An outcome event was not acknowledged this pass: the queue is
    /// announced again at the end of the pass.
    unacked: bool,
}

impl Pass<'_> {
    /// Notes a record that cannot be used, once.
    fn skip(&mut self, id: &str, set: &str, reason: &str) {
        if self.invalid.insert(id.to_string()) {
            tracing::warn!(
                payment = %id.escape_debug(),
                "payment record in {set} left alone: {reason}"
            );
            self.summary.invalid += 1;
        }
    }

    /// The ids in a set and their records (`None`: no record), a chunk at a time.
    async fn read_records(
        &mut self,
        set: &str,
        mut each: impl FnMut(&mut Self, &str, Option<String>),
    ) -> anyhow::Result<()> {
        let ids: Vec<String> = self
            .redis
            .smembers(set)
            .await
            .with_context(|| format!("reading {set}"))?;
        for chunk in ids.chunks(1000) {
            let stored = super::records(self.redis, chunk).await?;
            for (id, json) in chunk.iter().zip(stored) {
                each(self, id, json);
            }
        }
        Ok(())
    }

    /// The usable payments in a set; unusable ones are logged once and counted.
    async fn read_set(&mut self, set: &str) -> anyhow::Result<Vec<Payment>> {
        let mut payments = Vec::new();
        self.read_records(set, |pass, id, json| {
            let Some(json) = json else { return };
            match usable(id, &json) {
                Ok(payment) => payments.push(payment),
                Err(reason) => pass.skip(id, set, &reason),
            }
        })
        .await?;
        Ok(payments)
    }

    /// The usable payments in the set of `from`, as candidates.
    async fn read_candidates(
        &mut self,
        from: ProcessingStatus,
        candidates: &mut Vec<Candidate>,
    ) -> anyhow::Result<()> {
        let set = keys::by_status(from);
        let cluster = self.redis.is_cluster();
        let mut elsewhere = Vec::new();
        self.read_records(&set, |pass, id, json| {
            let Some(json) = json else { return };
            match usable(id, &json) {
                // On a cluster a crash can leave the sets behind the
                // records: the record is right, and the sets are repaired.
                Ok(payment) if cluster && payment.processing_status != from => {
                    elsewhere.push((payment.payment_id, payment.processing_status));
                }
                Ok(payment) => candidates.push(Candidate {
                    id: payment.payment_id,
                    user: payment.user_id,
                    requested_ms: payment.requested_ms,
                    from,
                }),
                Err(reason) => pass.skip(id, &set, &reason),
            }
        })
        .await?;
        slots::repair_sets(self.redis, from, &elsewhere).await
    }

    /// Steps 2 to 4, a chunk of users at a time. Returns how many answers
    /// were stored.
    async fn process(
        &mut self,
        producer: &FutureProducer,
        topic: &str,
        settings: &Settings,
        progress: bool,
        halt: &CancellationToken,
        lock: &ProcessLock,
    ) -> anyhow::Result<u64> {
        let mut candidates = Vec::new();
        self.read_candidates(ProcessingStatus::InProcessing, &mut candidates)
            .await?;
        self.read_candidates(ProcessingStatus::New, &mut candidates)
            .await?;
        claim_order(&mut candidates);
        let bar = output::progress_bar(candidates.len() as u64, progress);
        let mut answered = 0;
        for chunk in chunks(&candidates, CHUNK) {
            lock.check()?;
            if halt.is_cancelled() {
                break;
            }
            let claimed = self.claim(chunk).await?;
            lock.check()?;
            let stored = self.send(claimed, settings, halt).await?;
            answered += stored.len() as u64;
            self.announce_payments(producer, topic, &stored, false)
                .await?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(answered)
    }

    /// Step 2 for one chunk: which payments go to the processor (see
    /// `claim.lua`), in [`claim_order`].
    async fn claim(&mut self, chunk: &[Candidate]) -> anyhow::Result<Vec<Payment>> {
        let ids: Vec<String> = chunk.iter().map(|c| c.id.clone()).collect();
        let stored = super::records(self.redis, &ids).await?;
        let now = crate::clock::now_rfc3339();
        let mut tried = Vec::with_capacity(chunk.len());
        let mut pipe = redis::pipe();
        let cluster = self.redis.is_cluster();
        for (candidate, json) in chunk.iter().zip(stored) {
            let Some(json) = json else { continue };
            let set = keys::by_status(candidate.from);
            let payment = match usable(&candidate.id, &json) {
                Ok(payment) => payment,
                Err(reason) => {
                    self.skip(&candidate.id, &set, &reason);
                    continue;
                }
            };
            // Changed since it was read (another run, or by hand): the
            // next pass sees it as it is now.
            if payment.processing_status != candidate.from || payment.user_id != candidate.user {
                continue;
            }
            if !cluster {
                pipe.add_command(claim_command(&payment, candidate.from, &now)?);
            }
            tried.push((candidate.from, payment));
        }
        if tried.is_empty() {
            return Ok(Vec::new());
        }
        let verdicts: Vec<(i64, String)> = if cluster {
            slots::claim(self.redis, &tried, &now).await?
        } else {
            run_pipeline(&pipe, self.redis)
                .await
                .context("claiming payments")?
        };
        let mut claimed = Vec::new();
        for ((from, payment), (verdict, reason)) in tried.into_iter().zip(verdicts) {
            match verdict {
                1 if from == ProcessingStatus::New => {
                    self.summary.claimed += 1;
                    claimed.push(Payment {
                        processing_status: ProcessingStatus::InProcessing,
                        updated_at: now.clone(),
                        ..payment
                    });
                }
                1 => claimed.push(payment),
                2 => {
                    tracing::debug!(payment = %payment.payment_id, "duplicated: {reason}");
                    self.summary.duplicated += 1;
                }
                _ => {}
            }
        }
        Ok(claimed)
    }

    /// Step 1, and step 4 for payments answered before this pass: produces
    /// the events of answered payments still queued and takes each off the
    /// queue once the broker has it. The queue is read before this pass
    /// answered anything, so an event may already be on the topic (its ack
    /// was lost): it goes out flagged `reannounced`, and `notify consume`
    /// looks for an earlier copy.
    async fn announce(&mut self, producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
        let mut queued = self.read_set(keys::UNANNOUNCED).await?;
        if self.redis.is_cluster() {
            // Queued before their answer is stored: only answered ones go
            // out, each with its subscription step finished first.
            queued.retain(|p| {
                matches!(
                    p.processing_status,
                    ProcessingStatus::Processed | ProcessingStatus::Completed
                )
            });
            slots::finish_answers(self.redis, &queued).await?;
        }
        for chunk in queued.chunks(CHUNK) {
            self.announce_payments(producer, topic, chunk, true).await?;
        }
        Ok(())
    }

    /// Produces the outcome events of `payments` (answered: processed, in
    /// the announce queue) and takes each off the queue once the broker
    /// has it. One not acknowledged stays queued for the next announce.
    async fn announce_payments(
        &mut self,
        producer: &FutureProducer,
        topic: &str,
        payments: &[Payment],
        reannounced: bool,
    ) -> anyhow::Result<()> {
        if payments.is_empty() {
            return Ok(());
        }
        let occurred_at = crate::clock::now_rfc3339();
        let events: Vec<_> = payments
            .iter()
            .map(|p| {
                TransactionEvent {
                    transaction_id: p.payment_id.clone(),
                    user_id: p.user_id.clone(),
                    status: p.payment_status.as_str().into(),
                    event_id: Some(format!("payment:{}", p.payment_id)),
                    amount: Some(p.amount),
                    currency: Some(p.currency.clone()),
                    reason: p.detail.clone(),
                    occurred_at: Some(occurred_at.clone()),
                    payment_id: Some(p.payment_id.clone()),
                    kind: Some(p.kind.as_str().into()),
                    reannounced,
                    ..TransactionEvent::default()
                }
                .to_outgoing(topic)
            })
            .collect();
        let acks = produce_each(producer, &events).await;
        let mut acknowledged = Vec::with_capacity(payments.len());
        for (payment, ack) in payments.iter().zip(&acks) {
            match ack {
                Ok(()) => acknowledged.push(payment.payment_id.as_str()),
                Err(e) => {
                    self.unacked = true;
                    tracing::warn!(payment = %payment.payment_id, "outcome event not sent, will retry: {e:#}")
                }
            }
        }
        if !acknowledged.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(keys::UNANNOUNCED)
                .arg(&acknowledged)
                .query_async(self.redis)
                .await
                .context("updating the announce queue")?;
            self.summary.announced += acknowledged.len() as u64;
        }
        Ok(())
    }

    /// Step 3 and the storing half of 4 for one chunk. Every answer had is
    /// stored, even when the run is halted midway. Returns the payments
    /// whose answer was stored, as stored.
    async fn send(
        &mut self,
        claimed: Vec<Payment>,
        settings: &Settings,
        halt: &CancellationToken,
    ) -> anyhow::Result<Vec<Payment>> {
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Set when the processor turns out to be misconfigured: no further
        // call starts, and the answers already had are still stored.
        let stop = halt.child_token();
        let misconfigured: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let answers: Vec<(Payment, Option<Answer>, u64)> = match &settings.processor {
            // An instant simulator answers in place: a task per payment
            // would cost more than the answer.
            Processor::Simulator(simulator) if simulator.latency.is_zero() => claimed
                .into_iter()
                .map(|payment| {
                    if stop.is_cancelled() {
                        return (payment, None, 0);
                    }
                    let answer = simulator.answer(&payment.payment_id);
                    (payment, Some(answer), 1)
                })
                .collect(),
            processor => {
                futures::stream::iter(claimed)
                    .map(|payment| {
                        let (stop, misconfigured) = (&stop, &misconfigured);
                        async move {
                            let (outcome, calls) =
                                call(processor, &payment, settings.retries, stop).await;
                            let answer = match outcome {
                                Ok(answer) => answer,
                                Err(e) => {
                                    stop.cancel();
                                    misconfigured.lock().expect("failure slot").get_or_insert(e);
                                    None
                                }
                            };
                            (payment, answer, calls)
                        }
                    })
                    .buffer_unordered(settings.concurrency)
                    .collect()
                    .await
            }
        };

        let now = crate::clock::now_rfc3339();
        let mut pipe = redis::pipe();
        let mut tried = Vec::new();
        for (payment, answer, calls) in answers {
            self.summary.calls += calls;
            let Some(answer) = answer else {
                self.summary.unanswered += 1;
                continue;
            };
            let next = Payment {
                processing_status: ProcessingStatus::Processed,
                payment_status: answer.status,
                detail: answer.detail,
                updated_at: now.clone(),
                ..payment
            };
            if !self.redis.is_cluster() {
                pipe.add_command(answer_command(&next)?);
            }
            tried.push(next);
        }
        let mut stored = Vec::with_capacity(tried.len());
        if !tried.is_empty() {
            let moved: Vec<i64> = if self.redis.is_cluster() {
                slots::answer(self.redis, &tried).await?
            } else {
                run_pipeline(&pipe, self.redis)
                    .await
                    .context("storing processor answers")?
            };
            for (payment, moved) in tried.into_iter().zip(moved) {
                if moved == 1 {
                    *self
                        .summary
                        .answered
                        .entry(payment.payment_status.as_str())
                        .or_default() += 1;
                    stored.push(payment);
                }
            }
        }
        if let Some(e) = misconfigured.into_inner().expect("failure slot") {
            // A TLS failure comes before any request is sent; a redirect
            // names no outcome. Either way the payment stays unknown and
            // goes again, with the same Idempotency-Key, on the next run.
            return Err(anyhow!(
                "{e:#}; stopped: payments still in_processing are sent by the next run, once that is fixed"
            ));
        }
        Ok(stored)
    }
}

/// The `claim.lua` call for one payment now in `from`.
fn claim_command(
    payment: &Payment,
    from: ProcessingStatus,
    now: &str,
) -> anyhow::Result<redis::Cmd> {
    let id = &payment.payment_id;
    let as_status = |status| Payment {
        processing_status: status,
        updated_at: now.to_string(),
        detail: None,
        ..payment.clone()
    };
    let claimed = serde_json::to_vec(&as_status(ProcessingStatus::InProcessing))?;
    let duplicated = serde_json::to_vec(&as_status(ProcessingStatus::Duplicated))?;
    let mut cmd = CLAIM.call(&[
        &keys::payment(id),
        &keys::claim(payment.kind, &payment.user_id),
        &keys::subscription(&payment.user_id),
        &keys::by_status(from),
        &keys::by_status(ProcessingStatus::InProcessing),
        &keys::by_status(ProcessingStatus::Duplicated),
    ]);
    cmd.arg(id)
        .arg(from.as_str())
        .arg(payment.kind.as_str())
        .arg(&payment.user_id)
        .arg(claimed)
        .arg(duplicated);
    Ok(cmd)
}

/// The `answer.lua` call storing `payment` (processed, with its answer).
fn answer_command(payment: &Payment) -> anyhow::Result<redis::Cmd> {
    let id = &payment.payment_id;
    let action = slots::subscription_change(payment);
    let mut cmd = ANSWER.call(&[
        &keys::payment(id),
        &keys::by_status(ProcessingStatus::InProcessing),
        &keys::by_status(ProcessingStatus::Processed),
        keys::UNANNOUNCED,
        &keys::subscription(&payment.user_id),
        &keys::claim(payment.kind, &payment.user_id),
    ]);
    cmd.arg(id)
        .arg(serde_json::to_vec(payment)?)
        .arg(action)
        .arg(&payment.plan)
        .arg(payment.amount.to_string())
        .arg(&payment.currency)
        .arg(&payment.updated_at);
    Ok(cmd)
}

/// One payment through the processor, retrying passing failures with
/// backoff; no call starts once `halt` is set (shutdown, the lock lost, or
/// another call found the processor misconfigured). Returns the answer, if
/// any, or why the processor cannot work as configured (never retried),
/// and how many calls were made.
async fn call(
    processor: &Processor,
    payment: &Payment,
    retries: u32,
    halt: &CancellationToken,
) -> (anyhow::Result<Option<Answer>>, u64) {
    let mut backoff = Duration::from_millis(200);
    let mut calls = 0;
    for attempt in 0..=retries {
        if halt.is_cancelled() {
            break;
        }
        calls += 1;
        match processor.execute(payment).await {
            Ok(answer) => return (Ok(Some(answer)), calls),
            Err(Failure::Misconfigured(e)) => return (Err(e), calls),
            Err(Failure::Passing(e)) => {
                tracing::warn!(payment = %payment.payment_id, attempt, "no answer: {e:#}")
            }
        }
        if attempt < retries {
            tokio::select! {
                _ = halt.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    (Ok(None), calls)
}

/// The lock that keeps `payments process` runs one at a time, renewed in
/// the background for as long as the run lasts.
struct ProcessLock {
    token: String,
    /// Why the lock was lost, once it is.
    lost: Arc<Mutex<Option<String>>>,
    renewer: tokio::task::JoinHandle<()>,
}

impl ProcessLock {
    /// Takes the lock if it is free; `halt` is set if it is later lost.
    async fn take(
        redis: &mut Redis,
        ttl: Duration,
        halt: CancellationToken,
    ) -> anyhow::Result<ProcessLock> {
        let token = uuid::Uuid::new_v4().to_string();
        let taken: Option<String> = redis::cmd("SET")
            .arg(LOCK_KEY)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(redis)
            .await
            .context("taking the process lock")?;
        if taken.is_none() {
            bail!(
                "another `payments process` is running (Redis key {LOCK_KEY}, expires within {}s)",
                ttl.as_secs()
            );
        }
        let lost = Arc::new(Mutex::new(None));
        let renewer = tokio::spawn(keep_lock(
            redis.clone(),
            token.clone(),
            ttl,
            lost.clone(),
            halt,
        ));
        Ok(ProcessLock {
            token,
            lost,
            renewer,
        })
    }

    /// `Err` once the lock is lost: the run must make no further processor call.
    fn check(&self) -> anyhow::Result<()> {
        match &*self.lost.lock().expect("lock state") {
            Some(why) => Err(anyhow!(
                "lost the process lock {LOCK_KEY} ({why}): stopped before the next processor call; \
                 payments still in_processing are sent by the next run"
            )),
            None => Ok(()),
        }
    }

    /// Stops renewing and deletes the lock if it is still this run's, so
    /// the next run does not wait for it to expire.
    async fn release(self, redis: &mut Redis) {
        self.renewer.abort();
        let released: redis::RedisResult<i64> = RELEASE_LOCK
            .invocation()
            .key(LOCK_KEY)
            .arg(&self.token)
            .invoke_async(redis)
            .await;
        if let Err(e) = released {
            tracing::warn!("releasing the process lock (it expires by itself): {e}");
        }
    }
}

/// Renews the lock every quarter of its time to live. It is lost when it is
/// no longer this run's (expired, taken by another run), or when renewing
/// has failed for half its time to live: then `halt` is set.
async fn keep_lock(
    mut redis: Redis,
    token: String,
    ttl: Duration,
    lost: Arc<Mutex<Option<String>>>,
    halt: CancellationToken,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(ttl / 4).await;
        let result: redis::RedisResult<i64> = RENEW_LOCK
            .invocation()
            .key(LOCK_KEY)
            .arg(&token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut redis)
            .await;
        let why = match result {
            Ok(1) => {
                renewed = Instant::now();
                continue;
            }
            Ok(_) => "it expired or another run holds it".to_string(),
            Err(e) if renewed.elapsed() >= ttl / 2 => {
                format!("not renewed for {}s: {e}", renewed.elapsed().as_secs())
            }
            Err(e) => {
                tracing::warn!("renewing the process lock, will try again: {e}");
                continue;
            }
        };
        tracing::info!("lost the process lock: {why}");
        *lost.lock().expect("lock state") = Some(why);
        halt.cancel();
        return;
    }
}

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    output: Output,
    progress: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Settings::from_args(&args)?;
    if let Processor::Http(processor) = &settings.processor {
        processor.check().await?;
    }
    for script in [&*CLAIM, &*ANSWER, &*RENEW_LOCK, &*RELEASE_LOCK] {
        script.load(redis).await?;
    }
    // Set on shutdown, and by the lock's keeper when the lock is lost.
    let halt = shutdown.child_token();
    let lock = ProcessLock::take(redis, settings.lock_ttl, halt.clone()).await?;
    let started = Instant::now();
    let mut pass = Pass {
        redis,
        summary: ProcessSummary {
            answered: PaymentStatus::ALL[..3]
                .iter()
                .map(|s| (s.as_str(), 0))
                .collect(),
            ..ProcessSummary::default()
        },
        invalid: HashSet::new(),
        unacked: false,
    };
    let passes = async {
        let mut last_work = Instant::now();
        loop {
            lock.check()?;
            pass.unacked = false;
            pass.announce(producer, topic).await?;
            let before = pass.summary.claimed;
            pass.summary.unanswered = 0;
            let answered = pass
                .process(producer, topic, &settings, progress, &halt, &lock)
                .await?;
            lock.check()?;
            if pass.unacked {
                pass.announce(producer, topic).await?;
            }
            if pass.summary.claimed > before || answered > 0 {
                last_work = Instant::now();
            }
            let Some(idle) = settings.until_idle else {
                break;
            };
            if last_work.elapsed() >= idle || shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = halt.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        anyhow::Ok(())
    };
    let result = passes.await;
    let mut summary = std::mem::take(&mut pass.summary);
    // Released whatever happened, so the next run does not wait for expiry.
    lock.release(redis).await;
    result?;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    output.emit(&summary)?;
    if summary.unanswered > 0 {
        return Err(anyhow::Error::new(PartlyDone(format!(
            "{} unanswered: the processor did not answer; they stay in_processing and the next run sends them again",
            output::count(summary.unanswered, "payment", "payments")
        ))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_SECONDS;

    #[test]
    fn durations_are_bounded_with_a_clear_error() {
        assert_eq!(
            seconds_from("--until-idle", 10.0, 0.0).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            seconds_from("--until-idle", 0.0, 0.0).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            seconds_from("--timeout", MAX_SECONDS, 0.001).unwrap(),
            Duration::from_secs(31_536_000)
        );
        for bad in [
            1e20,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -1.0,
            -0.0001,
            MAX_SECONDS + 1.0,
        ] {
            let e = seconds_from("--until-idle", bad, 0.0)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--until-idle must be a number of seconds"),
                "{e}"
            );
        }
        // A timeout of zero would time every call out at once.
        assert!(seconds_from("--timeout", 0.0, 0.001).is_err());
        assert!(seconds_from("--timeout", 1e-300, 0.001).is_err());
    }

    fn candidate(user: &str, id: &str, ms: u64, from: ProcessingStatus) -> Candidate {
        Candidate {
            id: id.into(),
            user: user.into(),
            requested_ms: ms,
            from,
        }
    }

    #[test]
    fn a_users_payments_are_claimed_together_waiting_first_then_latest_first() {
        use ProcessingStatus::{InProcessing, New};
        let mut candidates = vec![
            candidate("bob", "b1", 1, New),
            candidate("alice", "a1", 1, New),
            candidate("alice", "a3", 3, New),
            candidate("alice", "a0", 0, InProcessing),
            candidate("bob", "b2", 2, New),
            candidate("alice", "a2", 3, New),
            candidate("carol", "c1", 5, New),
        ];
        claim_order(&mut candidates);
        let ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a0", "a3", "a2", "a1", "b2", "b1", "c1"]);
        // Chunks of about 2 never split a user: alice's four go together.
        let sizes: Vec<usize> = chunks(&candidates, 2).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [4, 2, 1]);
        let sizes: Vec<usize> = chunks(&candidates, 100).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [7]);
        assert!(chunks(&[], 2).is_empty());
    }

    #[test]
    fn stored_records_are_checked_before_use() {
        let record = |id: &str, user: &str| {
            serde_json::json!({
                "payment_id": id, "user_id": user, "plan": "premium",
                "amount": 9.99, "currency": "USD", "kind": "payment",
                "processing_status": "new", "payment_status": "unknown",
                "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
                "requested_ms": 1
            })
            .to_string()
        };
        assert!(usable("p1", &record("p1", "alice")).is_ok());
        assert_eq!(
            usable("p1", &record("p2", "alice")).unwrap_err(),
            "its payment_id differs from its key"
        );
        assert_eq!(
            usable("p\r\n", &record("p\r\n", "alice")).unwrap_err(),
            "payment_id contains a control character (U+000D)"
        );
        assert_eq!(
            usable("p1", &record("p1", "al ice")).unwrap_err(),
            "user_id contains whitespace"
        );
        assert!(usable("p1", "{not json").is_err());
    }
}

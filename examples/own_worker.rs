//! A team's own worker on payctl's consume loop: it reads outcome events
//! (`payment_transactions`' shape) in a consumer group of its own and
//! counts each user's completed transactions in a Redis hash.
//!
//! The loop (`payctl::worker::run`) is at-least-once: a batch may be
//! delivered and applied again (a crash before its commit, a retry after a
//! Redis error). So the effect is idempotent: `count_completed.lua` adds
//! each event's id to a set and raises the count only when the id is new.
//! Bytes that are not an event become a dead letter on `<topic>.dlq`, and
//! the worker moves on.
//!
//! To be self-contained (and to leave the pipeline's own topics alone), the
//! example makes a topic of its own, produces events to it (one of them
//! twice, one record not JSON), then reads them twice: once in a new group,
//! and once more in another group from the start, as after lost commits.
//! The counts do not change the second time. In a real worker, `inputs`
//! would be `Topics::default().transactions`.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!   cargo run --example own_worker
//!
//! Prints (<s> is the run's suffix):
//!   users ex-alice-<s> ex-bob-<s>
//!   first read: processed 6, counted 3, already-counted 1, not-completed 1, dead-lettered 1
//!     ex-alice-<s> completed 2
//!     ex-bob-<s> completed 1
//!   read again: processed 6, counted 0, already-counted 4, not-completed 1, dead-lettered 1
//!     ex-alice-<s> completed 2
//!     ex-bob-<s> completed 1

mod common;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use payctl::config::{Topics, WorkerLimits};
use payctl::events::TransactionEvent;
use payctl::kafka::{create_topics, produce_all, Outgoing};
use payctl::store::{Redis, Script};
use payctl::worker::{
    self, BatchHandler, Decoder, Delivery, Verdict, WorkerSpec, WorkerSummary, DEAD_LETTERED,
};
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

const COUNTED: &str = "counted";
const ALREADY_COUNTED: &str = "already-counted";
const NOT_COMPLETED: &str = "not-completed";
const OUTCOMES: &[&str] = &[COUNTED, ALREADY_COUNTED, NOT_COMPLETED, DEAD_LETTERED];

static COUNT_COMPLETED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("count_completed.lua")));

/// What a message on `payment_transactions` is to this worker.
enum Event {
    /// A completed outcome: its id (the same on every redelivery) and user.
    Completed { id: String, user: String },
    /// Another status (`rejected`): nothing to count.
    Other,
    /// Not a transaction event: dead-lettered with this reason.
    Undecodable(String),
}

/// Reads an event from its bytes alone, as [`BatchHandler::decoder`] asks.
fn decode(payload: &[u8]) -> Event {
    match serde_json::from_slice::<TransactionEvent>(payload) {
        Err(e) => Event::Undecodable(format!("not a transaction event: {e}")),
        Ok(event) if event.status != "completed" => Event::Other,
        Ok(event) => Event::Completed {
            // Events in the notification service's shape carry no event_id: one party's
            // outcome of one transaction is then what identifies it.
            id: event.event_id.unwrap_or_else(|| {
                format!(
                    "{}:{}:{}",
                    event.transaction_id, event.status, event.user_id
                )
            }),
            user: event.user_id,
        },
    }
}

/// Counts completed events per user, each event once.
struct CompletedCounter {
    redis: Redis,
    /// The ids already counted (KEYS[1] of count_completed.lua).
    counted: String,
    /// User id → completed count (KEYS[2]).
    counts: String,
}

impl CompletedCounter {
    /// A counter whose keys are `{namespace}:…`: one hash slot, so the
    /// script may touch both on a Redis Cluster.
    fn new(redis: Redis, namespace: &str) -> CompletedCounter {
        CompletedCounter {
            redis,
            counted: format!("{{{namespace}}}:counted"),
            counts: format!("{{{namespace}}}:completed"),
        }
    }

    /// How many completed events of `user` were counted.
    async fn count(&mut self, user: &str) -> anyhow::Result<i64> {
        let count: Option<i64> = self.redis.hget(&self.counts, user).await?;
        Ok(count.unwrap_or(0))
    }
}

impl BatchHandler for CompletedCounter {
    type Decoded = Event;

    fn decoder(&self) -> Decoder<Event> {
        Arc::new(|batch| batch.iter().map(|d| decode(&d.payload)).collect())
    }

    /// One script call for the whole batch: one round trip to Redis.
    async fn apply(
        &mut self,
        batch: &[Delivery],
        events: &[Event],
    ) -> anyhow::Result<Vec<Verdict>> {
        let mut call = COUNT_COMPLETED.invocation();
        call.key(&self.counted).key(&self.counts);
        let mut completed = 0;
        for event in events {
            if let Event::Completed { id, user } = event {
                call.arg(id).arg(user);
                completed += 1;
            }
        }
        let answers: Vec<i64> = if completed == 0 {
            Vec::new()
        } else {
            call.invoke_async(&mut self.redis)
                .await
                .context("counting completed events")?
        };
        anyhow::ensure!(
            answers.len() == completed,
            "{} answers for {completed} completed events",
            answers.len()
        );
        let mut answers = answers.into_iter();
        Ok(batch
            .iter()
            .zip(events)
            .map(|(delivery, event)| match event {
                Event::Completed { .. } if answers.next() == Some(1) => {
                    Verdict::new(COUNTED, Vec::new())
                }
                Event::Completed { .. } => Verdict::new(ALREADY_COUNTED, Vec::new()),
                Event::Other => Verdict::new(NOT_COMPLETED, Vec::new()),
                Event::Undecodable(reason) => Verdict::dead_letter(delivery, reason.clone()),
            })
            .collect())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = common::kafka();
    let redis = common::redis().connect().await?;
    let suffix = common::suffix();
    let topic = format!("example-events-{suffix}");
    // A worker needs its input's dead-letter topic too. One replica: the
    // local broker is one broker.
    create_topics(&kafka, &[topic.clone(), Topics::dlq(&topic)], 3, 1).await?;

    let (alice, bob) = (format!("ex-alice-{suffix}"), format!("ex-bob-{suffix}"));
    println!("users {alice} {bob}");
    let outcome =
        |transaction: &str, user: &str, status: &str, event_id: Option<&str>| TransactionEvent {
            transaction_id: format!("{transaction}-{suffix}"),
            user_id: user.to_string(),
            status: status.to_string(),
            event_id: event_id.map(|id| format!("{transaction}-{suffix}:{id}")),
            ..TransactionEvent::default()
        };
    let paid = outcome("t1", &alice, "completed", Some("2:debit"));
    let records = vec![
        paid.to_outgoing(&topic),
        outcome("t2", &alice, "completed", Some("2:debit")).to_outgoing(&topic),
        // The same outcome announced twice: counted once.
        paid.to_outgoing(&topic),
        // The notification service's shape, without an event id.
        outcome("t3", &bob, "completed", None).to_outgoing(&topic),
        outcome("t4", &bob, "rejected", Some("2:debit")).to_outgoing(&topic),
        Outgoing {
            topic: topic.clone(),
            key: Some(bob.clone()),
            payload: b"not json".to_vec(),
            headers: Vec::new(),
        },
    ];
    produce_all(&kafka.producer()?, &records).await?;

    let mut counter = CompletedCounter::new(redis.clone(), &format!("example-{suffix}"));
    for (label, group) in [
        ("first read", format!("example-counter-{suffix}")),
        // Another group from the start: every event delivered again.
        ("read again", format!("example-counter-{suffix}-again")),
    ] {
        let spec = WorkerSpec {
            group,
            inputs: vec![topic.clone()],
            outputs: Vec::new(),
            outcomes: OUTCOMES,
            limits: WorkerLimits {
                until_idle: Some(Duration::from_secs(2)),
                batch_size: WorkerLimits::DEFAULT_BATCH_SIZE,
                ..WorkerLimits::default()
            },
            redis: Some(redis.clone()),
        };
        let summary = worker::run(&kafka, &spec, &mut counter, CancellationToken::new()).await?;
        println!("{label}: {}", outcomes(&summary));
        for user in [&alice, &bob] {
            println!("  {user} completed {}", counter.count(user).await?);
        }
    }
    Ok(())
}

/// `processed 6, counted 3, …`, every outcome in [`OUTCOMES`] order.
fn outcomes(summary: &WorkerSummary) -> String {
    let counts = OUTCOMES
        .iter()
        .map(|outcome| format!("{outcome} {}", summary.count(outcome)));
    std::iter::once(format!("processed {}", summary.processed))
        .chain(counts)
        .collect::<Vec<_>>()
        .join(", ")
}

//! `payctl transactions log`: the history of transaction outcomes.
//!
//! The topic is the record of what happened; this reads it from the start
//! (no consumer group), keeps the newest matches and prints them.

use std::time::Duration;

use rdkafka::message::Message;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::events::TransactionEvent;
use crate::kafka::{Scan, StartAt};
use crate::output::{self, Output, Rendered, Report};

/// Show transaction outcomes from the transactions topic, newest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl transactions log
  payctl transactions log --user alice --limit 50
  payctl transactions log --output json | jq -r '.[] | select(.status == \"rejected\") | .transaction_id'")]
pub struct Args {
    /// Only this user's outcomes.
    #[arg(long)]
    pub user: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Stop reading after this many seconds without a message.
    #[arg(long, default_value_t = 1.5)]
    pub wait: f64,
}

#[derive(Serialize)]
struct Entry {
    #[serde(flatten, serialize_with = "serialize_event")]
    event: TransactionEvent,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
}

/// An event as printed: the amount a string with the currency's digits
/// (`"12.50"`); the event on the topic keeps its number.
#[derive(Serialize)]
struct EventView<'a> {
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

#[derive(Serialize)]
#[serde(transparent)]
struct Log(Vec<Entry>);

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

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    topic: &str,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.wait.is_finite() && args.wait >= 0.0,
        "--wait must be a number of seconds"
    );
    let scan = Scan {
        topic: topic.to_string(),
        partition: None,
        start: StartAt::Beginning,
        group: None,
        follow: false,
        wait: Duration::from_secs_f64(args.wait),
    };
    let mut newest: Vec<Entry> = Vec::new();
    // Partitions interleave: keep the newest by broker timestamp.
    let newest_first = |entries: &mut Vec<Entry>, limit: usize| {
        entries.sort_by_key(|e| std::cmp::Reverse((e.timestamp, e.partition, e.offset)));
        entries.truncate(limit);
    };
    scan.run(kafka, &shutdown, |message| {
        let Some(event) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<TransactionEvent>(p).ok())
        else {
            return Ok(true);
        };
        if args.user.as_ref().is_none_or(|u| *u == event.user_id) {
            newest.push(Entry {
                event,
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
            });
            if newest.len() > 2 * args.limit.max(1000) {
                newest_first(&mut newest, args.limit);
            }
        }
        Ok(true)
    })
    .await?;
    newest_first(&mut newest, args.limit);
    output.emit(&Log(newest))
}

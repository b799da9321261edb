//! `payctl rates serve`: the worker that answers conversion requests (the converter service).
//!
//! Each request's answer is written to `conversion:{id}` once: a redelivered
//! request finds the answer there and changes nothing.

use std::sync::LazyLock;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::money::Currency;
use crate::output::Output;
use crate::rates;
use crate::rates::convert::{
    compute, ConversionRecord, ConversionRequest, Unanswerable, CONVERSION_TTL_SECS,
};
use crate::store::{keys, run_pipeline, Redis, Script};
use crate::worker::{self, BatchHandler, Delivery, Verdict, WorkerArgs, WorkerSpec, DEAD_LETTERED};

/// Answer conversion requests from the conversion_requests topic (a worker).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  payctl rates serve\n  payctl rates serve --until-idle 5")]
pub struct Args {
    /// Consumer group.
    #[arg(long, env = "PAYCTL_RATES_GROUP", default_value = "payctl-rates-serve")]
    pub group: String,
    /// Currency for cross rates when a request names none.
    #[arg(long, env = "PAYCTL_PIVOT", default_value = "USD")]
    pub pivot: String,
    #[command(flatten)]
    pub limits: WorkerArgs,
}

const ANSWERED: &str = "answered";
const FAILED: &str = "failed";
const ALREADY_ANSWERED: &str = "duplicate";

static ANSWER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: conversion record. ARGV: answer JSON, ttl. The first answer stays.
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' and (record.status == 'done' or record.status == 'failed') then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#,
    )
});

struct ConversionServer {
    redis: Redis,
    pivot: Currency,
}

impl BatchHandler for ConversionServer {
    type Decoded = ();

    fn decoder(&self) -> worker::Decoder<()> {
        worker::no_decoding()
    }

    async fn prepare(&mut self) -> anyhow::Result<()> {
        ANSWER.load(&mut self.redis).await?;
        Ok(())
    }

    async fn apply(&mut self, batch: &[Delivery], _decoded: &[()]) -> anyhow::Result<Vec<Verdict>> {
        let rates = rates::all(&mut self.redis).await?;
        let now = crate::clock::now_rfc3339();
        let mut pipe = redis::pipe();
        let mut answered = Vec::new();
        let mut cluster_answers: Vec<(String, String)> = Vec::new();
        let mut verdicts: Vec<Option<Verdict>> = Vec::with_capacity(batch.len());
        for delivery in batch {
            let request: ConversionRequest = match serde_json::from_slice(&delivery.payload) {
                Ok(r) => r,
                Err(e) => {
                    verdicts.push(Some(Verdict::dead_letter(
                        delivery,
                        format!("not a conversion request: {e}"),
                    )));
                    continue;
                }
            };
            let checked = crate::store::check_id("id", &request.id).and_then(|()| {
                match &request.requested_at {
                    Some(at) if at.len() > 64 => Err("requested_at is longer than 64 bytes".into()),
                    _ => Ok(()),
                }
            });
            if let Err(reason) = checked {
                verdicts.push(Some(Verdict::dead_letter(
                    delivery,
                    format!("not a conversion request: {reason}"),
                )));
                continue;
            }
            let pivot = request
                .pivot
                .as_deref()
                .and_then(|p| Currency::parse(p).ok())
                .unwrap_or(self.pivot);
            let outcome = compute(&rates, request.amount, &request.from, &request.to, pivot);
            let (status, answer, error) = match outcome {
                Ok(conversion) => ("done", Some(conversion), None),
                Err(e @ Unanswerable::NoRate { .. }) => ("failed", None, Some(e.to_string())),
                Err(Unanswerable::BadRequest(reason)) => {
                    verdicts.push(Some(Verdict::dead_letter(delivery, reason)));
                    continue;
                }
            };
            let record = ConversionRecord {
                request_id: request.id.clone(),
                status: status.into(),
                amount: request.amount,
                from: request.from.clone(),
                to: request.to.clone(),
                requested_at: request.requested_at.clone(),
                answer,
                error,
                answered_at: Some(now.clone()),
            };
            let key = keys::conversion(&request.id);
            let json = serde_json::to_string(&record)?;
            let mut call = ANSWER.call(&[&key]);
            call.arg(&json).arg(CONVERSION_TTL_SECS);
            pipe.add_command(call);
            cluster_answers.push((key, json));
            answered.push(if status == "done" { ANSWERED } else { FAILED });
            verdicts.push(None);
        }
        let written: Vec<i64> = if self.redis.is_cluster() {
            // Answers of many slots: one script call each.
            let mut written = Vec::with_capacity(cluster_answers.len());
            for (key, record) in &cluster_answers {
                let n: i64 = ANSWER
                    .invocation()
                    .key(key)
                    .arg(record)
                    .arg(CONVERSION_TTL_SECS)
                    .invoke_async(&mut self.redis)
                    .await
                    .context("writing conversion answers")?;
                written.push(n);
            }
            written
        } else {
            run_pipeline(&pipe, &mut self.redis)
                .await
                .context("writing conversion answers")?
        };
        let mut results = answered.into_iter().zip(written);
        Ok(verdicts
            .into_iter()
            .map(|v| {
                v.unwrap_or_else(|| match results.next().expect("one reply per answer") {
                    (_, 0) => Verdict::new(ALREADY_ANSWERED, Vec::new()),
                    (label, _) => Verdict::new(label, Vec::new()),
                })
            })
            .collect())
    }
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    redis: Redis,
    topic: &str,
    output: Output,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let spec = WorkerSpec {
        group: args.group,
        inputs: vec![topic.to_string()],
        outputs: Vec::new(),
        outcomes: &[ANSWERED, FAILED, ALREADY_ANSWERED, DEAD_LETTERED],
        limits: args.limits.limits()?,
        redis: Some(redis.clone()),
    };
    let mut server = ConversionServer {
        redis,
        pivot: Currency::parse(&args.pivot)?,
    };
    let summary = worker::run(kafka, &spec, &mut server, shutdown).await?;
    output.emit(&summary)
}

//! What a long-running worker tells its monitoring: Prometheus text at
//! `/metrics`, liveness at `/healthz`, readiness at `/readyz`, on the
//! address `--metrics-listen` names.
//!
//! The worker loop records into one process-wide set of metrics (there is
//! one worker per process); without `--metrics-listen` nothing is served.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

/// The worker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Messages applied, by outcome (`completed`, `dead-lettered`, …).
    pub messages: IntCounterVec,
    /// Batches offered again after a passing failure, by what failed.
    pub retries: IntCounterVec,
    /// Messages per applied batch.
    pub batch_size: Histogram,
    /// Seconds to apply a batch in Redis, retries included.
    pub batch_seconds: Histogram,
    /// 1 while the group has given this worker partitions.
    pub assigned: IntGauge,
    /// 1 while the batch in hand is waiting to be retried.
    pub retrying: IntGauge,
    /// Records produced (outcome events, dead letters).
    pub produced: IntCounter,
    /// Dead letters, by the kind of reason (the reason's words before its
    /// first `:`, so the label set stays small).
    dead_letters: IntCounterVec,
    /// Reason kinds seen, at most [`MAX_REASON_KINDS`].
    reason_kinds: Mutex<HashSet<String>>,
    /// Redis commands or scripts that failed (each failed attempt).
    pub redis_errors: IntCounter,
    /// Records the broker did not acknowledge (each failed attempt).
    pub producer_errors: IntCounter,
    /// Messages not yet committed by the worker's group, per partition,
    /// measured every [`LAG_EVERY`].
    pub consumer_lag: IntGaugeVec,
    /// `serve`: requests answered, by method, route and status.
    pub http_requests: IntCounterVec,
    /// `serve`: seconds to answer, by method and route.
    pub http_seconds: HistogramVec,
}

/// Most distinct reason labels on `dead_letters_total`; later kinds count
/// as `other`.
const MAX_REASON_KINDS: usize = 32;
/// How often a worker with metrics measures its group's lag.
pub const LAG_EVERY: Duration = Duration::from_secs(10);

fn build() -> prometheus::Result<Metrics> {
    let registry = Registry::new_custom(Some("payctl".into()), None)?;
    let messages = IntCounterVec::new(
        Opts::new("messages_total", "Messages applied, by outcome."),
        &["outcome"],
    )?;
    let retries = IntCounterVec::new(
        Opts::new(
            "retries_total",
            "Batches offered again after a passing failure, by what failed (redis, kafka, other).",
        ),
        &["cause"],
    )?;
    let batch_size = Histogram::with_opts(
        HistogramOpts::new("batch_size", "Messages per applied batch.").buckets(vec![
            1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0,
        ]),
    )?;
    let batch_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "batch_seconds",
            "Seconds to apply a batch in Redis, retries included.",
        )
        .buckets(vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ]),
    )?;
    let assigned = IntGauge::new(
        "assigned",
        "1 while the group has given this worker partitions.",
    )?;
    let retrying = IntGauge::new("retrying", "1 while the batch in hand waits to be retried.")?;
    let produced = IntCounter::new("produced_total", "Records produced and acknowledged.")?;
    registry.register(Box::new(messages.clone()))?;
    registry.register(Box::new(retries.clone()))?;
    registry.register(Box::new(batch_size.clone()))?;
    registry.register(Box::new(batch_seconds.clone()))?;
    registry.register(Box::new(assigned.clone()))?;
    registry.register(Box::new(retrying.clone()))?;
    registry.register(Box::new(produced.clone()))?;
    let dead_letters = IntCounterVec::new(
        Opts::new(
            "dead_letters_total",
            "Messages sent to a dead-letter topic, by kind of reason.",
        ),
        &["reason"],
    )?;
    let redis_errors = IntCounter::new(
        "redis_errors_total",
        "Redis calls that failed (each failed attempt).",
    )?;
    let producer_errors = IntCounter::new(
        "producer_errors_total",
        "Records the broker did not acknowledge (each failed attempt).",
    )?;
    let consumer_lag = IntGaugeVec::new(
        Opts::new(
            "consumer_lag",
            "Messages not yet committed by this worker's group, per partition.",
        ),
        &["topic", "partition"],
    )?;
    let http_requests = IntCounterVec::new(
        Opts::new(
            "http_requests_total",
            "HTTP requests answered, by method, route and status.",
        ),
        &["method", "route", "status"],
    )?;
    let http_seconds = HistogramVec::new(
        HistogramOpts::new("http_request_seconds", "Seconds to answer an HTTP request.").buckets(
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
        ),
        &["method", "route"],
    )?;
    registry.register(Box::new(dead_letters.clone()))?;
    registry.register(Box::new(redis_errors.clone()))?;
    registry.register(Box::new(producer_errors.clone()))?;
    registry.register(Box::new(consumer_lag.clone()))?;
    registry.register(Box::new(http_requests.clone()))?;
    registry.register(Box::new(http_seconds.clone()))?;
    Ok(Metrics {
        registry,
        messages,
        retries,
        batch_size,
        batch_seconds,
        assigned,
        retrying,
        produced,
        dead_letters,
        reason_kinds: Mutex::default(),
        redis_errors,
        producer_errors,
        consumer_lag,
        http_requests,
        http_seconds,
    })
}

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("the metrics' names and buckets are valid"));

/// The process's metrics (workers, `serve`, the producer).
pub fn worker() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn text(&self) -> String {
        let mut text = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text) {
            tracing::warn!("encoding metrics: {e}");
        }
        text
    }
}

impl Metrics {
    /// Counts a dead letter under its kind of reason.
    pub fn dead_lettered(&self, reason: &str) {
        let kind = reason_kind(reason);
        let label = {
            let mut kinds = self.reason_kinds.lock().unwrap_or_else(|e| e.into_inner());
            if kinds.contains(kind) || kinds.len() < MAX_REASON_KINDS {
                kinds.insert(kind.to_string());
                kind
            } else {
                "other"
            }
        };
        self.dead_letters.with_label_values(&[label]).inc();
    }
}

/// A reason's kind: its words before the first `:` (payctl's reasons
/// start with a fixed phrase, the details follow), at most 64 bytes.
fn reason_kind(reason: &str) -> &str {
    let head = reason.split(':').next().unwrap_or(reason).trim();
    let mut end = head.len().min(64);
    while !head.is_char_boundary(end) {
        end -= 1;
    }
    if head.is_empty() {
        "unknown"
    } else {
        &head[..end]
    }
}

/// What a failed batch's error came from, as the `retries_total` label.
pub fn cause(error: &anyhow::Error) -> &'static str {
    if error.chain().any(|c| c.is::<redis::RedisError>()) {
        "redis"
    } else if error.chain().any(|c| c.is::<rdkafka::error::KafkaError>()) {
        "kafka"
    } else {
        "other"
    }
}

/// What `/readyz` checks besides the worker's own state, and whose lag
/// `consumer_lag` reports.
#[derive(Clone)]
pub struct Probe {
    pub redis: Option<crate::store::Redis>,
    pub kafka: crate::config::KafkaConfig,
    pub group: String,
    pub topics: Vec<String>,
}

/// Redis answers PING and the broker answers a metadata request, each
/// within 2 s.
pub async fn reachable(
    redis: Option<&crate::store::Redis>,
    kafka: &crate::config::KafkaConfig,
) -> (bool, bool) {
    let redis_ok = match redis {
        None => true,
        Some(redis) => {
            let mut redis = redis.clone();
            let ping = redis::cmd("PING");
            let answer = tokio::time::timeout(
                Duration::from_secs(2),
                ping.query_async::<String>(&mut redis),
            )
            .await;
            matches!(answer, Ok(Ok(_)))
        }
    };
    let kafka = kafka.clone();
    let broker_ok =
        tokio::task::spawn_blocking(move || kafka.check_reachable(Duration::from_secs(2)))
            .await
            .is_ok_and(|r| r.is_ok());
    (redis_ok, broker_ok)
}

/// Text for `/metrics`.
pub fn exposition() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        worker().text(),
    )
}

/// Measures the group's lag every [`LAG_EVERY`] into `consumer_lag`, until
/// `stop`.
async fn watch_lag(probe: Probe, stop: CancellationToken) {
    loop {
        match crate::groups::lag::group_lag(&probe.kafka, &probe.group, probe.topics.clone()).await
        {
            Ok(lag) => {
                for p in lag.partitions {
                    worker()
                        .consumer_lag
                        .with_label_values(&[p.topic.as_str(), &p.partition.to_string()])
                        .set(p.lag);
                }
            }
            Err(e) => tracing::debug!("measuring the group's lag: {e:#}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LAG_EVERY) => {}
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until
/// `shutdown`, and measures the group's lag meanwhile. Ready: partitions
/// assigned, no batch waiting for a retry, Redis and the broker reachable.
pub async fn serve(
    address: SocketAddr,
    probe: Probe,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {address}: {e}"))?;
    let lag = tokio::spawn(watch_lag(probe.clone(), shutdown.clone()));
    let app = Router::new()
        .route("/metrics", get(|| async { exposition() }))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(move || async move {
                let m = worker();
                let assigned = m.assigned.get() == 1;
                let retrying = m.retrying.get() == 1;
                let (redis, broker) = reachable(probe.redis.as_ref(), &probe.kafka).await;
                let status = if assigned && !retrying && redis && broker {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::json!({
                    "partitions_assigned": assigned,
                    "retrying": retrying,
                    "redis": redis,
                    "broker": broker,
                });
                (status, Json(body)).into_response()
            }),
        );
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("serving metrics on {address}: {e}"));
    lag.abort();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_reasons_are_counted_by_kind_and_the_kinds_are_bounded() {
        assert_eq!(
            reason_kind("not a transfer message: missing field `x` at line 1 column 10"),
            "not a transfer message"
        );
        assert_eq!(reason_kind(""), "unknown");
        assert_eq!(reason_kind(&"é".repeat(100)).len(), 64);
        let m = build().unwrap();
        for i in 0..MAX_REASON_KINDS + 5 {
            m.dead_lettered(&format!("kind {i}: details"));
        }
        m.dead_lettered("kind 0: again");
        assert_eq!(m.dead_letters.with_label_values(&["kind 0"]).get(), 2);
        assert_eq!(m.dead_letters.with_label_values(&["other"]).get(), 5);
        assert!(m
            .text()
            .contains("payctl_dead_letters_total{reason=\"kind 1\"} 1"));
    }
}

//! What a long-running worker tells its monitoring: Prometheus text at
//! `/metrics`, liveness at `/healthz`, readiness at `/readyz`, on the
//! address `--metrics-listen` names.
//!
//! The worker loop records into one process-wide set of metrics (there is
//! one worker per process); without `--metrics-listen` nothing is served.

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
}

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
    Ok(Metrics {
        registry,
        messages,
        retries,
        batch_size,
        batch_seconds,
        assigned,
        retrying,
        produced,
    })
}

static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("the metrics' names and buckets are valid"));

/// The process's worker metrics.
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `address` until
/// `shutdown`. Ready: partitions assigned, and no batch waiting for a
/// retry (Redis or the broker failing).
pub async fn serve(address: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {address}: {e}"))?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    worker().text(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .route(
            "/readyz",
            get(|| async {
                let m = worker();
                let assigned = m.assigned.get() == 1;
                let retrying = m.retrying.get() == 1;
                let status = if assigned && !retrying {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::json!({
                    "partitions_assigned": assigned,
                    "retrying": retrying,
                });
                (status, Json(body)).into_response()
            }),
        );
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("serving metrics on {address}: {e}"))
}

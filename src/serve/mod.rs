//! `payctl serve`: the HTTP faces of the services payctl replaces (the
//! banking transaction service, the converter, the subscription app) over
//! the same library calls as the CLI, with health, readiness, metrics and
//! an OpenAPI 3 document generated from the handlers.
//!
//! Every answer is JSON; every error is `{"error": {"code", "message"}}`
//! with its status: 400 malformed or invalid, 404 unknown id, 409 a
//! conflict (an idempotency key used for another transfer, a request id
//! taken, a subscription in the way), 413 a body over the limit, 503 Redis
//! or the broker unreachable (or a request over its time), 500 anything
//! else. SIGTERM stops accepting, lets requests in flight finish, and
//! exits 0.

mod conversions;
mod subscriptions;
mod transfers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_scalar::Servable as _;

use crate::config::{KafkaConfig, Topics};
use crate::failure::{classify, Class};
use crate::store::Redis;

/// Serve the HTTP API until SIGTERM/SIGINT.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl serve --listen 127.0.0.1:8080
  payctl serve --listen 0.0.0.0:8080 --metrics-listen 127.0.0.1:9464
  curl -s -XPOST localhost:8080/transactions -H 'Idempotency-Key: order-17' \\
       -d '{\"sender\":\"alice\",\"receiver\":\"bob\",\"amount\":\"12.50\"}'
  curl -s localhost:8080/transactions/TRANSFER_ID
  curl -s localhost:8080/api/openapi     # the OpenAPI 3 document; the docs page is /api/docs")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "PAYCTL_LISTEN")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics (requests by route
    /// and status, latency), with /healthz and /readyz.
    #[arg(long, value_name = "ADDR", env = "PAYCTL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Clone)]
struct Service {
    redis: Redis,
    producer: FutureProducer,
    kafka: Arc<KafkaConfig>,
    topics: Arc<Topics>,
    timeout: Duration,
}

impl Service {
    fn redis(&self) -> Redis {
        self.redis.clone()
    }
}

/// An error answer: status, a stable code, and a message for people.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// Stable, for programs: `invalid`, `refused`, `not_found`, `no_rate`,
    /// `idempotency_conflict`, `exists`, `subscription_active`,
    /// `no_subscription`, `too_large`, `unavailable`, `timeout`, `internal`.
    code: String,
    /// For people.
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure of the library call, by its class: Redis or the broker
    /// away is 503, a refusal (exit 1 on the CLI) is 400, a bad value 400,
    /// the rest 500.
    fn from_error(error: anyhow::Error) -> ApiError {
        let message = crate::config::scrub(&format!("{error:#}")).into_owned();
        if message.contains("was used for a different transfer") {
            return ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message);
        }
        if error.chain().any(|c| c.is::<crate::exit::Refusal>()) {
            return ApiError::new(StatusCode::BAD_REQUEST, "refused", message);
        }
        if error.chain().any(|c| c.is::<crate::money::MoneyError>()) {
            return ApiError::bad(message);
        }
        match classify(&error) {
            Class::Passing => {
                if crate::metrics::cause(&error) == "redis" {
                    crate::metrics::worker().redis_errors.inc();
                }
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// Runs `work` within the service's time limit.
async fn timed<T>(
    service: &Service,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(service.timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("not done within {:.1}s", service.timeout.as_secs_f64()),
            ))
        })
}

/// A body read within the limit, or the error answer for it.
pub(crate) fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                rejection.body_text(),
            )
        } else {
            ApiError::bad(rejection.body_text())
        }
    })
}

/// A JSON body read within the limit and decoded as `T` (`what` names it in
/// the error: "the body is not a transaction: …").
fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let raw = read_body(body)?;
    serde_json::from_slice(&raw).map_err(|e| ApiError::bad(format!("the body is not {what}: {e}")))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Object)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// Readiness: Redis answers PING and the broker answers metadata.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Redis and the broker are reachable", body = Object),
        (status = 503, description = "Redis or the broker is not", body = Object),
    ))]
async fn readyz(State(service): State<Service>) -> Response {
    let (redis, broker) = crate::metrics::reachable(Some(&service.redis), &service.kafka).await;
    let status = if redis && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"redis": redis, "broker": broker}))).into_response()
}

pub(crate) async fn unknown_route() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// The document's frame: title, version, tags. The paths come from the
/// routes registered below.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "payctl",
        description = "The HTTP faces of a payment pipeline on Kafka and Redis: transfers, \
                       accounts, conversions and rates, subscription payments. Amounts are \
                       exact decimals, sent as strings (\"12.50\") or JSON numbers and answered \
                       as strings with the currency's digits."
    ),
    tags(
        (name = "transfers", description = "Money between accounts, at most once per idempotency key"),
        (name = "accounts", description = "Balances in one currency each"),
        (name = "conversions", description = "Exact conversion with stored rates, now or over Kafka"),
        (name = "subscriptions", description = "Subscription payments and refunds, and their status"),
        (name = "health", description = "Liveness and readiness"),
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The API's routes and the OpenAPI document describing exactly them: a
/// route is only added with its `#[utoipa::path]` description.
fn api() -> (Router<Service>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(transfers::create_transaction))
        .routes(routes!(transfers::transaction_log))
        .routes(routes!(transfers::show_transaction))
        .routes(routes!(transfers::open_account))
        .routes(routes!(transfers::show_account))
        .routes(routes!(transfers::deposit))
        .routes(routes!(conversions::convert))
        .routes(routes!(conversions::show_conversion))
        .routes(routes!(conversions::list_rates))
        .routes(routes!(conversions::set_rate))
        .routes(routes!(subscriptions::pay))
        .routes(routes!(subscriptions::refund))
        .routes(routes!(subscriptions::show_payment))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .split_for_parts()
}

/// The OpenAPI document of `payctl serve`, as served at `/api/openapi`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// Counts and times every request by method, route template and status.
async fn record(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = crate::metrics::worker();
    metrics
        .http_requests
        .with_label_values(&[method.as_str(), &route, response.status().as_str()])
        .inc();
    metrics
        .http_seconds
        .with_label_values(&[method.as_str(), &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    redis: Redis,
    producer: FutureProducer,
    topics: &Topics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.request_timeout.is_finite() && args.request_timeout > 0.0,
        "--request-timeout must be a positive number of seconds"
    );
    let service = Service {
        redis,
        producer,
        kafka: Arc::new(kafka.clone()),
        topics: Arc::new(topics.clone()),
        timeout: Duration::from_secs_f64(args.request_timeout),
    };
    let (routes, document) = api();
    let docs = utoipa_scalar::Scalar::with_url("/api/docs", document.clone()).title("payctl API");
    let app = routes
        .route("/api/openapi", get(move || async move { Json(document) }))
        .merge(Router::from(docs))
        .fallback(unknown_route)
        .layer(middleware::from_fn(record))
        .layer(DefaultBodyLimit::max(args.max_body))
        .with_state(service.clone());
    let metrics = args.metrics_listen.map(|address| {
        let app = Router::new()
            .route("/metrics", get(|| async { crate::metrics::exposition() }))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(service);
        tokio::spawn(listen_until(address, app, shutdown.clone()))
    });
    let served = listen_until(args.listen, app, shutdown).await;
    if let Some(metrics) = metrics {
        match metrics.await {
            Ok(Err(e)) => tracing::warn!("the metrics server: {e:#}"),
            Err(e) => tracing::warn!("the metrics server: {e}"),
            Ok(Ok(())) => {}
        }
    }
    served
}

/// Serves `app` on `address` until `shutdown`, then lets the requests in
/// flight finish.
pub(crate) async fn listen_until(
    address: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {address}: {e}"))?;
    tracing::info!("serving on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("serving on {address}: {e}"))?;
    tracing::info!("stopped: every request in flight was answered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the server answers is in the document, with its method,
    /// and every operation in the document names its responses.
    #[test]
    fn the_document_describes_every_route() {
        let document = openapi();
        let paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/transactions",
            "/transactions/log",
            "/transactions/{id}",
            "/accounts",
            "/accounts/{id}",
            "/accounts/{id}/deposit",
            "/convert",
            "/convert/{id}",
            "/rates",
            "/rates/{base}/{quote}",
            "/subscriptions/pay",
            "/subscriptions/refund",
            "/payments/{id}",
            "/healthz",
            "/readyz",
        ] {
            assert!(paths.contains(&path), "{path} is not documented: {paths:?}");
        }
        let text = serde_json::to_value(&document).unwrap();
        for (path, item) in text["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                assert!(
                    operation["responses"]
                        .as_object()
                        .is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no response"
                );
            }
        }
    }
}

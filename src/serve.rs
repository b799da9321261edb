//! `payctl serve`: the transaction service's HTTP face (seeds 002 and 004)
//! over the same library calls as the CLI, with health and readiness.
//!
//! Every answer is JSON; every error is `{"error": {"code", "message"}}`
//! with its status: 400 malformed or invalid, 404 unknown id, 409 an
//! idempotency key used for another transfer, 413 a body over the limit,
//! 503 Redis or the broker unreachable (or a request over its time), 500
//! anything else. SIGTERM stops accepting, lets requests in flight finish,
//! and exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::failure::{classify, Class};
use crate::money::Decimal;
use crate::store::Redis;
use crate::transfer::initiate::{self, Publisher, TransferRequest};

/// Serve the transaction API over HTTP until SIGTERM/SIGINT.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl serve --listen 127.0.0.1:8080
  curl -s -XPOST localhost:8080/transactions -H 'Idempotency-Key: order-17' \\
       -d '{\"sender\":\"alice\",\"receiver\":\"bob\",\"amount\":\"12.50\"}'
  curl -s localhost:8080/transactions/TRANSFER_ID
  curl -s localhost:8080/readyz")]
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
}

#[derive(Clone)]
struct Service {
    redis: Redis,
    producer: FutureProducer,
    kafka: Arc<KafkaConfig>,
    transfers_topic: Arc<str>,
    transactions_topic: Arc<str>,
    timeout: Duration,
}

/// An error answer: status, a stable code, and a message for people.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
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

    /// A failure of the library call, by its class: Redis or the broker
    /// away is 503, a refusal (exit 1 on the CLI) is 400, the rest 500.
    fn from_error(error: anyhow::Error) -> ApiError {
        let message = crate::config::scrub(&format!("{error:#}")).into_owned();
        if message.contains("was used for a different transfer") {
            return ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message);
        }
        if error.chain().any(|c| c.is::<crate::exit::Refusal>()) {
            return ApiError::new(StatusCode::BAD_REQUEST, "refused", message);
        }
        match classify(&error) {
            Class::Passing => {
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

/// `POST /transactions`: the seed's field names or the CLI's; the amount
/// as a string or a JSON number, read exactly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTransaction {
    #[serde(alias = "sender_id", alias = "from")]
    sender: String,
    #[serde(alias = "receiver_id", alias = "to")]
    receiver: String,
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    initiated: initiate::Initiated,
}

async fn create_transaction(
    State(service): State<Service>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let raw = read_body(raw)?;
    let request: NewTransaction = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("the body is not a transaction: {e}")))?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| ApiError::bad("the Idempotency-Key header is not text"))?;
            initiate::validate_idempotency_key(key).map_err(ApiError::bad)?;
            Some(key.to_string())
        }
    };
    let request = TransferRequest {
        from: request.sender,
        to: request.receiver,
        amount: request.amount,
        currency: request.currency,
        idempotency_key,
    };
    timed(&service, async {
        let mut redis = service.redis.clone();
        let transfers = match initiate::prepare(&mut redis, &[request], |_| String::new())
            .await
            .map_err(ApiError::from_error)?
        {
            Ok(transfers) => transfers,
            Err(problems) => {
                let refused = problems.iter().all(|p| p.refusal);
                let message: Vec<String> = problems.into_iter().map(|p| p.message).collect();
                let code = if refused { "refused" } else { "invalid" };
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code,
                    message.join("; "),
                ));
            }
        };
        let mut publisher = Publisher {
            redis: &mut redis,
            producer: &service.producer,
            topic: &service.transfers_topic,
        };
        let initiated = publisher
            .initiate(transfers)
            .await
            .map_err(ApiError::from_error)?
            .pop()
            .expect("one transfer, one result")
            .map_err(ApiError::from_error)?;
        let status = if initiated.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(Created { initiated })))
    })
    .await
}

async fn show_transaction(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Json<crate::transfer::ShownTransfer>, ApiError> {
    timed(&service, async {
        let mut redis = service.redis.clone();
        match crate::transfer::get(&mut redis, &id).await {
            Ok(Some(transfer)) => Ok(Json(crate::transfer::ShownTransfer(transfer))),
            Ok(None) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no transfer {id}"),
            )),
            Err(e) => Err(ApiError::from_error(e)),
        }
    })
    .await
}

/// `POST /accounts`: `{"id", "currency", "balance"}` (balance optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    id: String,
    #[serde(default = "default_currency")]
    currency: String,
    #[serde(default, deserialize_with = "optional_amount")]
    balance: Option<Decimal>,
}

fn default_currency() -> String {
    "USD".into()
}

/// An amount as a string or a JSON number, read exactly, or absent.
fn optional_amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    crate::money::deserialize_typed(d).map(Some)
}

/// `POST /accounts/{id}/deposit`: `{"amount"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deposit {
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
}

/// A library error about one account: unknown is 404, existing 409.
fn account_error(error: anyhow::Error) -> ApiError {
    let message = format!("{error:#}");
    if message.starts_with("unknown account") {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    } else if message.ends_with("already exists") {
        ApiError::new(StatusCode::CONFLICT, "exists", message)
    } else if error.chain().any(|c| c.is::<crate::money::MoneyError>()) {
        ApiError::bad(message)
    } else {
        ApiError::from_error(error)
    }
}

async fn open_account(
    State(service): State<Service>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<crate::accounts::Account>), ApiError> {
    let raw = read_body(raw)?;
    let request: NewAccount = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("the body is not an account: {e}")))?;
    crate::accounts::validate_id(&request.id).map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let currency = crate::money::Currency::parse(&request.currency)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let balance = match request.balance {
        Some(value) if !value.is_zero() => Some(
            crate::money::Money::amount(value, currency)
                .map_err(|e| ApiError::bad(e.to_string()))?,
        ),
        _ => None,
    };
    timed(&service, async {
        let mut redis = service.redis.clone();
        let account = crate::accounts::open(&mut redis, &request.id, currency, balance)
            .await
            .map_err(account_error)?;
        Ok((StatusCode::CREATED, Json(account)))
    })
    .await
}

async fn deposit(
    State(service): State<Service>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::accounts::Account>, ApiError> {
    let raw = read_body(raw)?;
    let request: Deposit = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("the body is not a deposit: {e}")))?;
    timed(&service, async {
        let mut redis = service.redis.clone();
        let amount = request.amount.to_string();
        let account = crate::accounts::deposit(&mut redis, &id, &amount)
            .await
            .map_err(account_error)?;
        Ok(Json(account))
    })
    .await
}

async fn show_account(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Json<crate::accounts::Account>, ApiError> {
    timed(&service, async {
        let mut redis = service.redis.clone();
        let account = crate::accounts::require(&mut redis, &id)
            .await
            .map_err(account_error)?;
        Ok(Json(account))
    })
    .await
}

/// `GET /transactions/log?user=&status=&limit=`: the transaction log,
/// newest first, as `transactions log` reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    user: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// The most entries one request may ask for.
const MAX_LOG_LIMIT: usize = 1000;

async fn transaction_log(
    State(service): State<Service>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<crate::transactions::log::Log>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_LOG_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "limit must be from 1 to {MAX_LOG_LIMIT}"
        )));
    }
    let args = crate::transactions::log::Args {
        user: query.user,
        status: query.status,
        since: None,
        filters: Vec::new(),
        limit,
        wait: 1.0,
    };
    timed(&service, async {
        let stop = CancellationToken::new();
        crate::transactions::log::find(&args, &service.kafka, &service.transactions_topic, &stop)
            .await
            .map(Json)
            .map_err(ApiError::from_error)
    })
    .await
}

/// `POST /convert`: `{"amount", "from", "to", "pivot"}`, answered at once
/// with the stored rates, rounded as `rates convert` rounds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvertRequest {
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
    from: String,
    to: String,
    #[serde(default = "default_currency")]
    pivot: String,
}

async fn convert(
    State(service): State<Service>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::rates::convert::ShownConversion>, ApiError> {
    use crate::rates::convert::{compute, ShownConversion, Unanswerable};
    let raw = read_body(raw)?;
    let request: ConvertRequest = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("the body is not a conversion: {e}")))?;
    let pivot =
        crate::money::Currency::parse(&request.pivot).map_err(|e| ApiError::bad(e.to_string()))?;
    timed(&service, async {
        let mut redis = service.redis.clone();
        let rates = crate::rates::all(&mut redis)
            .await
            .map_err(ApiError::from_error)?;
        match compute(&rates, request.amount, &request.from, &request.to, pivot) {
            Ok(conversion) => Ok(Json(ShownConversion(conversion))),
            Err(e @ Unanswerable::NoRate { .. }) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_rate",
                e.to_string(),
            )),
            Err(e) => Err(ApiError::bad(e.to_string())),
        }
    })
    .await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "alive"}))
}

/// Ready when Redis answers PING and the broker answers metadata.
async fn readyz(State(service): State<Service>) -> Response {
    let redis_ok = {
        let mut redis = service.redis.clone();
        let ping = redis::cmd("PING");
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            ping.query_async::<String>(&mut redis),
        )
        .await;
        matches!(answer, Ok(Ok(_)))
    };
    let kafka = service.kafka.clone();
    let broker_ok =
        tokio::task::spawn_blocking(move || kafka.check_reachable(Duration::from_secs(2)))
            .await
            .is_ok_and(|r| r.is_ok());
    let status = if redis_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"redis": redis_ok, "broker": broker_ok})),
    )
        .into_response()
}

pub(crate) async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub async fn run(
    args: Args,
    kafka: &KafkaConfig,
    redis: Redis,
    producer: FutureProducer,
    topics: &crate::config::Topics,
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
        transfers_topic: topics.transfers.as_str().into(),
        transactions_topic: topics.transactions.as_str().into(),
        timeout: Duration::from_secs_f64(args.request_timeout),
    };
    let app = Router::new()
        .route("/transactions", post(create_transaction))
        .route("/transactions/log", get(transaction_log))
        .route("/transactions/{id}", get(show_transaction))
        .route("/convert", post(convert))
        .route("/accounts", post(open_account))
        .route("/accounts/{id}", get(show_account))
        .route("/accounts/{id}/deposit", post(deposit))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(args.max_body))
        .with_state(service);
    listen_until(args.listen, app, shutdown).await
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

//! `payctl payments simulate-processor`: the payment processor's HTTP face
//! (the subscription pipeline's processing service), answering from the same deterministic
//! simulator as `payments process`, so a pipeline with an HTTP processor
//! can be tried end to end without a payment provider.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::payments::processor::{Simulator, SimulatorArgs};
use crate::serve::{read_body, ApiError};

/// Answer POST /execute_transaction like a payment processor, from a seed.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl payments simulate-processor --listen 127.0.0.1:5001 --seed 7 --accept-rate 0.9
  payctl payments process --processor-url http://127.0.0.1:5001/execute_transaction
  curl -s -XPOST localhost:5001/execute_transaction -d '{\"payment_id\":\"p1\"}'")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub simulator: SimulatorArgs,
}

/// What the simulator needs of a request: the payment's id (the body's
/// `payment_id`, else the `Idempotency-Key` header). Other fields are the
/// caller's business.
#[derive(Debug, Deserialize)]
struct Execute {
    #[serde(default)]
    payment_id: Option<String>,
}

/// The answer, in payctl's form (`status`) and the subscription pipeline's (`success`).
#[derive(Debug, Serialize)]
struct Executed {
    payment_id: String,
    status: &'static str,
    success: bool,
    detail: String,
}

async fn execute(
    State(simulator): State<Arc<Simulator>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Executed>, ApiError> {
    let raw = read_body(raw)?;
    let request: Execute = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("the body is not a payment: {e}")))?;
    let header = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let payment_id = request
        .payment_id
        .or(header)
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .ok_or_else(|| {
            ApiError::bad(
                "a payment_id (or an Idempotency-Key header) of 1 to 256 bytes is required",
            )
        })?;
    if !simulator.latency.is_zero() {
        tokio::time::sleep(simulator.latency).await;
    }
    let answer = simulator.answer(&payment_id);
    Ok(Json(Executed {
        status: answer.status.as_str(),
        success: answer.status == crate::payments::PaymentStatus::Accepted,
        detail: answer.detail.unwrap_or_default(),
        payment_id,
    }))
}

pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let simulator = Arc::new(args.simulator.simulator()?);
    let app = Router::new()
        .route("/execute_transaction", post(execute))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "alive"})) }),
        )
        .fallback(crate::serve::unknown_route)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(simulator);
    crate::serve::listen_until(args.listen, app, shutdown).await
}

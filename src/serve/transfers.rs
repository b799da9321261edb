//! Transfers (`/transactions`) and accounts (`/accounts`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{json_body, timed, ApiError, ErrorBody, Service};
use crate::accounts::Account;
use crate::money::{Currency, Decimal, Money};
use crate::transfer::initiate::{self, Initiated, Publisher, TransferRequest};
use crate::transfer::{ShownTransfer, TransferView};

/// A transfer to make: the versioned transfer service's field names (`sender_id`, …) or the
/// CLI's (`from`, …) are accepted too.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewTransaction {
    #[serde(alias = "sender_id", alias = "from")]
    sender: String,
    #[serde(alias = "receiver_id", alias = "to")]
    receiver: String,
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
    /// The sender's account currency when absent; must match it when given.
    #[serde(default)]
    currency: Option<String>,
}

/// Initiate a transfer: stored, then published for `transfer process`.
///
/// With an `Idempotency-Key`, the same key returns the first transfer
/// (200, `created: false`) instead of making another.
#[utoipa::path(post, path = "/transactions", tag = "transfers",
    request_body = NewTransaction,
    params(("Idempotency-Key" = Option<String>, Header,
            description = "Makes a retried request return the first transfer")),
    responses(
        (status = 201, description = "Initiated", body = Initiated),
        (status = 200, description = "The idempotency key's earlier transfer", body = Initiated),
        (status = 400, description = "Malformed, invalid, or an unknown account", body = ErrorBody),
        (status = 409, description = "The key was used for a different transfer", body = ErrorBody),
        (status = 413, description = "Body over --max-body", body = ErrorBody),
        (status = 503, description = "Redis or the broker unreachable", body = ErrorBody),
    ))]
pub(super) async fn create_transaction(
    State(service): State<Service>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Initiated>), ApiError> {
    let request: NewTransaction = json_body(raw, "a transaction")?;
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
        let mut redis = service.redis();
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
            topic: &service.topics.transfers,
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
        Ok((status, Json(initiated)))
    })
    .await
}

/// A transfer by id, with its status and version.
#[utoipa::path(get, path = "/transactions/{id}", tag = "transfers",
    params(("id" = String, Path, description = "The transfer id")),
    responses(
        (status = 200, description = "The transfer", body = TransferView),
        (status = 404, description = "No transfer with this id", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn show_transaction(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Json<ShownTransfer>, ApiError> {
    timed(&service, async {
        let mut redis = service.redis();
        match crate::transfer::get(&mut redis, &id).await {
            Ok(Some(transfer)) => Ok(Json(ShownTransfer(transfer))),
            Ok(None) => Err(ApiError::not_found(format!("no transfer {id}"))),
            Err(e) => Err(ApiError::from_error(e)),
        }
    })
    .await
}

/// What to read from the transaction log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Only this user's outcomes.
    user: Option<String>,
    /// Only outcomes with this status (`completed`, `rejected`, …).
    status: Option<String>,
    /// At most this many, newest first (1 to 1000, default 20).
    limit: Option<usize>,
}

/// The most entries one request may ask for.
const MAX_LOG_LIMIT: usize = 1000;

/// The transaction log: outcomes read back from the transactions topic,
/// newest first, as `payctl transactions log` reads them.
#[utoipa::path(get, path = "/transactions/log", tag = "transfers",
    params(LogQuery),
    responses(
        (status = 200, description = "Outcomes, newest first",
         body = Vec<crate::transactions::log::Entry>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 503, description = "The broker unreachable", body = ErrorBody),
    ))]
pub(super) async fn transaction_log(
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
        crate::transactions::log::find(&args, &service.kafka, &service.topics.transactions, &stop)
            .await
            .map(Json)
            .map_err(ApiError::from_error)
    })
    .await
}

/// An account to open.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewAccount {
    id: String,
    /// ISO 4217 code; USD when absent.
    #[serde(default = "default_currency")]
    currency: String,
    /// The opening balance; 0 when absent.
    #[serde(default, deserialize_with = "optional_amount")]
    #[schema(value_type = Option<Decimal>)]
    balance: Option<Decimal>,
}

pub(super) fn default_currency() -> String {
    "USD".into()
}

/// An amount as a string or a JSON number, read exactly, or absent.
fn optional_amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    crate::money::deserialize_typed(d).map(Some)
}

/// Money into an account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Deposit {
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
}

/// A library error about one account: unknown is 404, existing 409.
fn account_error(error: anyhow::Error) -> ApiError {
    let message = format!("{error:#}");
    if message.starts_with("unknown account") {
        ApiError::not_found(message)
    } else if message.ends_with("already exists") {
        ApiError::new(StatusCode::CONFLICT, "exists", message)
    } else {
        ApiError::from_error(error)
    }
}

/// Open an account in one currency.
#[utoipa::path(post, path = "/accounts", tag = "accounts",
    request_body = NewAccount,
    responses(
        (status = 201, description = "Opened", body = Account),
        (status = 400, description = "Malformed or invalid", body = ErrorBody),
        (status = 409, description = "The account exists", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn open_account(
    State(service): State<Service>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    let request: NewAccount = json_body(raw, "an account")?;
    crate::accounts::validate_id(&request.id).map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let currency = Currency::parse(&request.currency).map_err(|e| ApiError::bad(e.to_string()))?;
    let balance = match request.balance {
        Some(value) if !value.is_zero() => {
            Some(Money::amount(value, currency).map_err(|e| ApiError::bad(e.to_string()))?)
        }
        _ => None,
    };
    timed(&service, async {
        let mut redis = service.redis();
        let account = crate::accounts::open(&mut redis, &request.id, currency, balance)
            .await
            .map_err(account_error)?;
        Ok((StatusCode::CREATED, Json(account)))
    })
    .await
}

/// Put money into an account, in its currency.
#[utoipa::path(post, path = "/accounts/{id}/deposit", tag = "accounts",
    request_body = Deposit,
    params(("id" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The account after the deposit", body = Account),
        (status = 400, description = "Malformed or invalid", body = ErrorBody),
        (status = 404, description = "No account with this id", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn deposit(
    State(service): State<Service>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Account>, ApiError> {
    let request: Deposit = json_body(raw, "a deposit")?;
    timed(&service, async {
        let mut redis = service.redis();
        let amount = request.amount.to_string();
        let account = crate::accounts::deposit(&mut redis, &id, &amount)
            .await
            .map_err(account_error)?;
        Ok(Json(account))
    })
    .await
}

/// An account and its balance.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 404, description = "No account with this id", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn show_account(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Json<Account>, ApiError> {
    timed(&service, async {
        let mut redis = service.redis();
        let account = crate::accounts::require(&mut redis, &id)
            .await
            .map_err(account_error)?;
        Ok(Json(account))
    })
    .await
}

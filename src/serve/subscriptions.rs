//! The subscription app: pay (`/subscriptions/pay`), refund
//! (`/subscriptions/refund`), and a payment's status (`/payments/{id}`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{json_body, timed, ApiError, ErrorBody, Service};
use crate::money::{Currency, Decimal, Money};
use crate::payments::show::{PaymentView, RequestView};
use crate::payments::{submit, PaymentRequest};

/// A subscription to pay for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Pay {
    #[serde(alias = "user")]
    user_id: String,
    plan: String,
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
    /// ISO 4217 code; USD when absent.
    #[serde(default = "super::transfers::default_currency")]
    currency: String,
}

/// Whose active subscription to refund.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Refund {
    #[serde(alias = "user")]
    user_id: String,
}

/// 202 with the request, and `Location` its payment's status.
fn accepted(request: PaymentRequest) -> Response {
    let location = format!("/payments/{}", request.payment_id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(submit::Submitted { request }),
    )
        .into_response()
}

/// A refusal of the subscription rules is a conflict with the user's
/// subscription: 409 with `code` (the CLI exits 1).
fn subscription_error(error: anyhow::Error, code: &'static str) -> ApiError {
    if error.chain().any(|c| c.is::<crate::exit::Refusal>()) {
        ApiError::new(StatusCode::CONFLICT, code, format!("{error:#}"))
    } else {
        ApiError::from_error(error)
    }
}

/// Pay for a subscription, as `payctl payments submit` does: refused while
/// the user has an active subscription, else published to the payments
/// topic for `payments save` and `payments process`.
#[utoipa::path(post, path = "/subscriptions/pay", tag = "subscriptions",
    request_body = Pay,
    responses(
        (status = 202, description = "Requested; follow it at /payments/{payment_id}",
         body = RequestView,
         headers(("Location" = String, description = "/payments/{payment_id}"))),
        (status = 400, description = "Malformed or invalid", body = ErrorBody),
        (status = 409, description = "The user has an active subscription (code subscription_active)",
         body = ErrorBody),
        (status = 503, description = "Redis or the broker unreachable", body = ErrorBody),
    ))]
pub(super) async fn pay(
    State(service): State<Service>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: Pay = json_body(raw, "a subscription payment")?;
    let currency = Currency::parse(&request.currency).map_err(|e| ApiError::bad(e.to_string()))?;
    let amount =
        Money::amount(request.amount, currency).map_err(|e| ApiError::bad(e.to_string()))?;
    crate::payments::check_id("user_id", &request.user_id).map_err(ApiError::bad)?;
    crate::payments::check_plan("plan", &request.plan).map_err(ApiError::bad)?;
    timed(&service, async {
        let mut redis = service.redis();
        let topic = &service.topics.payments;
        let (user, plan) = (&request.user_id, &request.plan);
        let submitted = submit::pay(&mut redis, &service.producer, topic, user, plan, amount)
            .await
            .map_err(|e| subscription_error(e, "subscription_active"))?;
        Ok(accepted(submitted))
    })
    .await
}

/// Refund the user's active subscription, as `payctl payments refund` does:
/// refused without one.
#[utoipa::path(post, path = "/subscriptions/refund", tag = "subscriptions",
    request_body = Refund,
    responses(
        (status = 202, description = "Requested; follow it at /payments/{payment_id}",
         body = RequestView,
         headers(("Location" = String, description = "/payments/{payment_id}"))),
        (status = 400, description = "Malformed or invalid", body = ErrorBody),
        (status = 409, description = "The user has no active subscription (code no_subscription)",
         body = ErrorBody),
        (status = 503, description = "Redis or the broker unreachable", body = ErrorBody),
    ))]
pub(super) async fn refund(
    State(service): State<Service>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: Refund = json_body(raw, "a refund")?;
    crate::payments::check_id("user_id", &request.user_id).map_err(ApiError::bad)?;
    timed(&service, async {
        let mut redis = service.redis();
        let topic = &service.topics.payments;
        let submitted =
            submit::refund_active(&mut redis, &service.producer, topic, &request.user_id)
                .await
                .map_err(|e| subscription_error(e, "no_subscription"))?;
        Ok(accepted(submitted))
    })
    .await
}

/// A payment by id: where it is in the pipeline and what the processor said.
#[utoipa::path(get, path = "/payments/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "The payment id")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "No payment with this id (yet: `payments save` stores it)",
         body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn show_payment(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Json<crate::payments::show::Shown>, ApiError> {
    crate::payments::check_id("the payment id", &id).map_err(ApiError::bad)?;
    timed(&service, async {
        let mut redis = service.redis();
        match crate::payments::get(&mut redis, &id).await {
            Ok(Some(payment)) => Ok(Json(crate::payments::show::Shown(payment))),
            Ok(None) => Err(ApiError::not_found(format!("no payment {id}"))),
            Err(e) => Err(ApiError::from_error(e)),
        }
    })
    .await
}

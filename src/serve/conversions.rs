//! Conversions (`/convert`) and rates (`/rates`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::transfers::default_currency;
use super::{json_body, timed, ApiError, ErrorBody, Service};
use crate::money::{Currency, Decimal};
use crate::rates::convert::{
    self, Ask, ConversionRecordView, ConversionView, IdTaken, ShownConversion, ShownRecord,
    Unanswerable,
};
use crate::rates::{Pair, RateChangeView, RateList, RateView, ShownChange};

/// A conversion to make.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConvertRequest {
    /// For `?async=true`: the caller's request id (the converter service sends one); a
    /// new one when absent.
    #[serde(default, alias = "request_id")]
    id: Option<String>,
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    amount: Decimal,
    from: String,
    to: String,
    /// Currency for cross rates; USD when absent.
    #[serde(default = "default_currency")]
    pivot: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ConvertQuery {
    /// Send the request over Kafka for `rates serve` to answer: 202 with a
    /// request id to look up at `GET /convert/{id}`.
    #[serde(default, rename = "async")]
    asynchronous: bool,
}

/// Convert an amount with the stored rates: the direct rate, else the
/// inverse, else a cross rate through the pivot; rounded once, half to
/// even, to the target currency's minor unit.
///
/// With `?async=true` the request goes to the conversion requests topic for
/// `payctl rates serve` to answer, as the converter service did: 202 with
/// the pending request.
#[utoipa::path(post, path = "/convert", tag = "conversions",
    request_body = ConvertRequest,
    params(ConvertQuery),
    responses(
        (status = 200, description = "Converted now", body = ConversionView),
        (status = 202, description = "Requested: look it up at /convert/{id}",
         body = ConversionRecordView,
         headers(("Location" = String, description = "/convert/{id}"))),
        (status = 400, description = "Malformed or invalid", body = ErrorBody),
        (status = 404, description = "No rate connects the currencies", body = ErrorBody),
        (status = 409, description = "The request id was used before", body = ErrorBody),
        (status = 503, description = "Redis or the broker unreachable", body = ErrorBody),
    ))]
pub(super) async fn convert(
    State(service): State<Service>,
    query: Result<Query<ConvertQuery>, QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    let request: ConvertRequest = json_body(raw, "a conversion")?;
    let pivot = Currency::parse(&request.pivot).map_err(|e| ApiError::bad(e.to_string()))?;
    if !query.asynchronous {
        if request.id.is_some() {
            return Err(ApiError::bad(
                "an id is only taken with ?async=true; a conversion answered now has none",
            ));
        }
        return timed(&service, async {
            let mut redis = service.redis();
            let rates = crate::rates::all(&mut redis)
                .await
                .map_err(ApiError::from_error)?;
            match convert::compute(&rates, request.amount, &request.from, &request.to, pivot) {
                Ok(conversion) => Ok(Json(ShownConversion(conversion)).into_response()),
                Err(e @ Unanswerable::NoRate { .. }) => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_rate",
                    e.to_string(),
                )),
                Err(e) => Err(ApiError::bad(e.to_string())),
            }
        })
        .await;
    }
    let ask = Ask {
        id: request.id.as_deref(),
        amount: request.amount,
        from: &request.from,
        to: &request.to,
        pivot,
    };
    timed(&service, async {
        let mut redis = service.redis();
        let topic = &service.topics.conversions;
        let record = convert::request(&mut redis, &service.producer, topic, ask)
            .await
            .map_err(|e| match e.downcast_ref::<IdTaken>() {
                Some(taken) => ApiError::new(StatusCode::CONFLICT, "exists", taken.to_string()),
                None => ApiError::from_error(e),
            })?;
        let location = format!("/convert/{}", record.request_id);
        Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            Json(ShownRecord(record)),
        )
            .into_response())
    })
    .await
}

/// An async conversion: `pending`, `done` with its answer, or `failed`
/// with why.
#[utoipa::path(get, path = "/convert/{id}", tag = "conversions",
    params(("id" = String, Path, description = "The request id from POST /convert?async=true")),
    responses(
        (status = 200, description = "The request and, once answered, the answer",
         body = ConversionRecordView),
        (status = 404, description = "No request with this id", body = ErrorBody),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn show_conversion(
    State(service): State<Service>,
    Path(id): Path<String>,
) -> Result<Json<ShownRecord>, ApiError> {
    timed(&service, async {
        let mut redis = service.redis();
        match convert::lookup(&mut redis, &id).await {
            Ok(Some(record)) => Ok(Json(ShownRecord(record))),
            Ok(None) => Err(ApiError::not_found(format!("no conversion request {id:?}"))),
            Err(e) => Err(ApiError::from_error(e)),
        }
    })
    .await
}

/// Every stored rate.
#[utoipa::path(get, path = "/rates", tag = "conversions",
    responses(
        (status = 200, description = "Rates, by pair", body = Vec<RateView>),
        (status = 503, description = "Redis unreachable", body = ErrorBody),
    ))]
pub(super) async fn list_rates(State(service): State<Service>) -> Result<Json<RateList>, ApiError> {
    timed(&service, async {
        let mut redis = service.redis();
        crate::rates::sorted(&mut redis)
            .await
            .map(|rates| Json(RateList(rates)))
            .map_err(ApiError::from_error)
    })
    .await
}

/// A new rate for a pair.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRate {
    /// Units of QUOTE per unit of BASE: above zero, at most 12 places.
    #[serde(deserialize_with = "crate::money::deserialize_typed")]
    rate: Decimal,
}

/// Set the rate of a pair and announce the change on the rate changes
/// topic, as `payctl rates set` does.
#[utoipa::path(put, path = "/rates/{base}/{quote}", tag = "conversions",
    request_body = NewRate,
    params(
        ("base" = String, Path, description = "Base currency, ISO 4217", example = "USD"),
        ("quote" = String, Path, description = "Quote currency, ISO 4217", example = "EUR"),
    ),
    responses(
        (status = 200, description = "The change, with the previous rate", body = RateChangeView),
        (status = 400, description = "Malformed or invalid", body = ErrorBody),
        (status = 503, description = "Redis or the broker unreachable", body = ErrorBody),
    ))]
pub(super) async fn set_rate(
    State(service): State<Service>,
    Path((base, quote)): Path<(String, String)>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<ShownChange>, ApiError> {
    let request: NewRate = json_body(raw, "a rate")?;
    let pair = Currency::parse(&base)
        .and_then(|base| Ok((base, Currency::parse(&quote)?)))
        .map_err(|e| ApiError::bad(e.to_string()))
        .and_then(|(base, quote)| {
            Pair::new(base, quote).map_err(|e| ApiError::bad(format!("{e:#}")))
        })?;
    let rate = crate::rates::validate_rate(&request.rate.to_string())
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    timed(&service, async {
        let mut redis = service.redis();
        let topic = &service.topics.rate_changes;
        let change = crate::rates::set(&mut redis, &service.producer, topic, pair, rate)
            .await
            .map_err(ApiError::from_error)?;
        Ok(Json(ShownChange(change)))
    })
    .await
}

//! `payctl rates convert`: exact conversion now, or a request over Kafka (`--async`).

use std::collections::HashMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::exit::refuse;
use crate::kafka::{produce_all, Outgoing};
use crate::money::{Currency, Decimal, Money};
use crate::output::{self, Output, Rendered, Report};
use crate::rates::conversion::{self, Ratio};
use crate::rates::{self, Pair, Rate};
use crate::store::{keys, Redis};

/// Convert an amount: the direct rate, else the inverse, else a cross rate
/// through the pivot currency. Rounds once, half to even, to the target's
/// minor unit. An unknown pair exits 1.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  payctl rates convert 100 USD EUR
  payctl rates convert 100 EUR JPY --pivot USD --output json
  payctl rates convert 100 USD EUR --async      # prints a request id; see: payctl rates result ID")]
pub struct Args {
    /// Amount in FROM, exact decimal.
    #[arg(allow_hyphen_values = true)]
    pub amount: String,
    pub from: String,
    pub to: String,
    /// Currency for cross rates.
    #[arg(long, env = "PAYCTL_PIVOT", default_value = "USD")]
    pub pivot: String,
    /// Send the request to the conversion_requests topic for `rates serve`
    /// to answer, and print its id.
    #[arg(long = "async")]
    pub asynchronous: bool,
}

/// A leg as reported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LegReport {
    pub pair: String,
    pub rate: Decimal,
    pub inverted: bool,
}

/// An answered conversion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conversion {
    pub amount: Decimal,
    pub from: String,
    pub to: String,
    pub result: Decimal,
    /// Units of TO per FROM, shown to 10 places (the computation is exact).
    pub rate: Decimal,
    /// `direct`, `inverse`, `cross via USD`, `same currency`.
    pub route: String,
    pub legs: Vec<LegReport>,
    pub rounding: String,
}

/// A conversion as `--output json` prints it: amounts strings with their
/// currency's digits, rates strings with their digits. The record stored in
/// `conversion:{id}` keeps its numbers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Conversion)]
pub struct ConversionView<'a> {
    pub amount: String,
    pub from: &'a str,
    pub to: &'a str,
    pub result: String,
    #[serde(serialize_with = "output::decimal_text")]
    #[schema(value_type = String)]
    pub rate: Decimal,
    pub route: &'a str,
    pub legs: Vec<LegView<'a>>,
    pub rounding: &'a str,
}

/// A leg as printed: its rate a string.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ConversionLeg)]
pub struct LegView<'a> {
    pub pair: &'a str,
    #[serde(serialize_with = "output::decimal_text")]
    #[schema(value_type = String)]
    pub rate: Decimal,
    pub inverted: bool,
}

impl<'a> From<&'a Conversion> for ConversionView<'a> {
    fn from(c: &'a Conversion) -> Self {
        ConversionView {
            amount: output::amount_text(c.amount, Some(&c.from)),
            from: &c.from,
            to: &c.to,
            result: output::amount_text(c.result, Some(&c.to)),
            rate: c.rate,
            route: &c.route,
            legs: c
                .legs
                .iter()
                .map(|l| LegView {
                    pair: &l.pair,
                    rate: l.rate,
                    inverted: l.inverted,
                })
                .collect(),
            rounding: &c.rounding,
        }
    }
}

/// A conversion record as `rates result` prints it (see [`ConversionView`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ConversionRecord)]
pub struct ConversionRecordView<'a> {
    pub request_id: &'a str,
    pub status: &'a str,
    pub amount: String,
    pub from: &'a str,
    pub to: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<ConversionView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<&'a str>,
}

impl<'a> From<&'a ConversionRecord> for ConversionRecordView<'a> {
    fn from(r: &'a ConversionRecord) -> Self {
        ConversionRecordView {
            request_id: &r.request_id,
            status: &r.status,
            amount: output::amount_text(r.amount, Some(&r.from)),
            from: &r.from,
            to: &r.to,
            requested_at: r.requested_at.as_deref(),
            answer: r.answer.as_ref().map(ConversionView::from),
            error: r.error.as_deref(),
            answered_at: r.answered_at.as_deref(),
        }
    }
}

/// An answered conversion, printed.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ShownConversion(#[serde(serialize_with = "serialize_conversion")] pub Conversion);

fn serialize_conversion<S: serde::Serializer>(c: &Conversion, s: S) -> Result<S::Ok, S::Error> {
    ConversionView::from(c).serialize(s)
}

/// A conversion record, printed.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ShownRecord(#[serde(serialize_with = "serialize_record")] pub ConversionRecord);

fn serialize_record<S: serde::Serializer>(r: &ConversionRecord, s: S) -> Result<S::Ok, S::Error> {
    ConversionRecordView::from(r).serialize(s)
}

/// The rounding rule, as reported with every conversion.
pub const ROUNDING: &str = "half-even, once, to the target currency's minor unit";

impl Report for ShownConversion {
    fn render(&self) -> Rendered {
        let conversion = &self.0;
        let legs: Vec<String> = conversion
            .legs
            .iter()
            .map(|l| {
                format!(
                    "{} {}{}",
                    l.pair,
                    l.rate,
                    if l.inverted { " (inverted)" } else { "" }
                )
            })
            .collect();
        Rendered::Table(output::record_table([
            (
                "amount",
                format!("{} {}", conversion.amount, conversion.from),
            ),
            ("result", format!("{} {}", conversion.result, conversion.to)),
            ("rate", conversion.rate.to_string()),
            ("route", conversion.route.clone()),
            ("legs", legs.join(", ")),
            ("rounding", conversion.rounding.clone()),
        ]))
    }
}

/// Why a conversion has no answer.
#[derive(Debug, thiserror::Error)]
pub enum Unanswerable {
    /// Bad amount or currency: the request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// No rate connects the two currencies.
    #[error("no rate for {from}/{to}: not direct, not inverse, not via {pivot}")]
    NoRate {
        from: String,
        to: String,
        pivot: String,
    },
}

/// Converts with the given rates; pure, so the worker and the CLI share it.
pub fn compute(
    rates: &HashMap<Pair, Rate>,
    amount: Decimal,
    from: &str,
    to: &str,
    pivot: Currency,
) -> Result<Conversion, Unanswerable> {
    let bad = |e: &dyn std::fmt::Display| Unanswerable::BadRequest(e.to_string());
    let from = Currency::parse(from).map_err(|e| bad(&e))?;
    let to = Currency::parse(to).map_err(|e| bad(&e))?;
    let money = Money::amount(amount, from).map_err(|e| bad(&format!("invalid amount: {e}")))?;
    let route = rates::find_route(rates, from, to, pivot).ok_or_else(|| Unanswerable::NoRate {
        from: from.code().into(),
        to: to.code().into(),
        pivot: pivot.code().into(),
    })?;
    let result = conversion::convert(money, to, &route.legs).map_err(|e| bad(&e))?;
    Ok(Conversion {
        amount: money.to_decimal(),
        from: from.code().into(),
        to: to.code().into(),
        result: result.to_decimal(),
        rate: Ratio::of_legs(&route.legs)
            .to_decimal(10)
            .map_err(|digits| bad(&format!("the rate {digits} is too large")))?
            .normalized(),
        route: route.how,
        legs: route
            .legs
            .iter()
            .map(|l| LegReport {
                pair: format!("{}/{}", l.base, l.quote),
                rate: l.rate,
                inverted: l.inverted,
            })
            .collect(),
        rounding: ROUNDING.into(),
    })
}

/// A conversion request on `conversion_requests` (the converter service sends `id`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversionRequest {
    #[serde(alias = "request_id")]
    pub id: String,
    pub amount: Decimal,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub pivot: Option<String>,
    #[serde(default)]
    pub requested_at: Option<String>,
}

/// `conversion:{id}`: a request and, once served, its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversionRecord {
    pub request_id: String,
    /// `pending`, `done` or `failed`.
    pub status: String,
    pub amount: Decimal,
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Conversion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<String>,
}

impl Report for ShownRecord {
    fn render(&self) -> Rendered {
        let record = &self.0;
        let mut rows = vec![
            ("request", record.request_id.clone()),
            ("status", record.status.clone()),
            ("amount", format!("{} {}", record.amount, record.from)),
        ];
        if let Some(a) = &record.answer {
            rows.push(("result", format!("{} {}", a.result, a.to)));
            rows.push(("rate", a.rate.to_string()));
            rows.push(("route", a.route.clone()));
        }
        if let Some(e) = &record.error {
            rows.push(("error", e.clone()));
        }
        Rendered::Table(output::record_table(rows))
    }
}

#[derive(Serialize)]
struct Requested {
    request_id: String,
}

impl Report for Requested {
    fn render(&self) -> Rendered {
        Rendered::Line(self.request_id.clone())
    }
}

/// `producer` is called only for `--async`: a plain conversion never opens Kafka.
pub async fn run<'p>(
    args: Args,
    redis: &mut Redis,
    producer: impl FnOnce() -> anyhow::Result<&'p rdkafka::producer::FutureProducer>,
    topic: &str,
    output: Output,
) -> anyhow::Result<()> {
    let pivot = Currency::parse(&args.pivot)?;
    let amount = Decimal::parse_typed(&args.amount).context("invalid amount")?;
    if !args.asynchronous {
        let rates = rates::all(redis).await?;
        return match compute(&rates, amount, &args.from, &args.to, pivot) {
            Ok(conversion) => output.emit(&ShownConversion(conversion)),
            Err(e @ Unanswerable::NoRate { .. }) => Err(refuse(e.to_string())),
            Err(e) => Err(e.into()),
        };
    }
    let asked = Ask {
        id: None,
        amount,
        from: &args.from,
        to: &args.to,
        pivot,
    };
    let record = request(redis, producer()?, topic, asked).await?;
    output.emit(&Requested {
        request_id: record.request_id,
    })
}

/// A conversion to ask `rates serve` for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The caller's request id (the converter service sends one), or `None` for a new one.
    pub id: Option<&'a str>,
    pub amount: Decimal,
    pub from: &'a str,
    pub to: &'a str,
    pub pivot: Currency,
}

/// The request id was used before: the first request keeps it.
#[derive(Debug, thiserror::Error)]
#[error("conversion request {0:?} exists already; nothing was requested")]
pub struct IdTaken(pub String);

/// Stores a pending `conversion:{id}` record and publishes the request to
/// `topic` for `rates serve` to answer; if the publish fails, the record is
/// removed again and nothing was requested. What can be checked now is
/// checked first: the currencies and the amount's digits.
pub async fn request(
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    ask: Ask<'_>,
) -> anyhow::Result<ConversionRecord> {
    let from = Currency::parse(ask.from)?;
    let to = Currency::parse(ask.to)?;
    Money::amount(ask.amount, from).context("invalid amount")?;
    let id = match ask.id {
        Some(id) => {
            crate::payments::check_id("the request id", id).map_err(anyhow::Error::msg)?;
            id.to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let requested_at = crate::clock::now_rfc3339();
    let request = ConversionRequest {
        id: id.clone(),
        amount: ask.amount,
        from: from.code().into(),
        to: to.code().into(),
        pivot: Some(ask.pivot.code().into()),
        requested_at: Some(requested_at.clone()),
    };
    let record = ConversionRecord {
        request_id: id.clone(),
        status: "pending".into(),
        amount: ask.amount,
        from: request.from.clone(),
        to: request.to.clone(),
        requested_at: Some(requested_at),
        answer: None,
        error: None,
        answered_at: None,
    };
    let key = keys::conversion(&id);
    let stored: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(serde_json::to_string(&record)?)
        .arg("NX")
        .arg("EX")
        .arg(CONVERSION_TTL_SECS)
        .query_async(redis)
        .await
        .context("storing the conversion request")?;
    if stored.is_none() {
        return Err(IdTaken(id).into());
    }
    let message = Outgoing {
        topic: topic.to_string(),
        key: Some(id.clone()),
        payload: serde_json::to_vec(&request)?,
        headers: Vec::new(),
    };
    if let Err(e) = produce_all(producer, &[message]).await {
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(redis)
            .await
            .unwrap_or(0);
        return Err(e.context("the conversion request was not published; nothing was requested"));
    }
    Ok(record)
}

/// The record of an async conversion, `None` for an unknown id.
pub async fn lookup(redis: &mut Redis, id: &str) -> anyhow::Result<Option<ConversionRecord>> {
    let json: Option<String> = redis::cmd("GET")
        .arg(keys::conversion(id))
        .query_async(redis)
        .await
        .context("reading the conversion")?;
    json.map(|json| serde_json::from_str(&json).context("reading the conversion record"))
        .transpose()
}

/// How long conversion requests and answers are kept.
pub const CONVERSION_TTL_SECS: u64 = 7 * 24 * 3600;

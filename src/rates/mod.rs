//! Currency rates (the banking app's currency converter, the converter service): stored in Redis, changed with an event
//! on `rate_changes`, used for exact conversions.
//!
//! The hash `rates` maps `BASE/QUOTE` to `{"base","quote","rate","updated_at"}`;
//! the rate is units of QUOTE per unit of BASE, an exact decimal.

pub mod conversion;
pub mod convert;
pub mod import;
pub mod list;
pub mod result;
pub mod serve;
pub mod set;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use anyhow::{bail, Context as _};
use rdkafka::producer::FutureProducer;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::events::RateChangeEvent;
use crate::kafka::produce_all;
use crate::money::{Currency, Decimal};
use crate::output::{self, Rendered, Report};
use crate::store::{keys, Redis, Script};
use conversion::Leg;

/// Most decimal places a rate may have.
pub const MAX_RATE_PLACES: u32 = 12;

/// A currency pair, `BASE/QUOTE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pair {
    pub base: Currency,
    pub quote: Currency,
}

impl Pair {
    /// A pair of two different currencies.
    pub fn new(base: Currency, quote: Currency) -> anyhow::Result<Pair> {
        if base == quote {
            bail!("a rate needs two different currencies, got {base}/{quote}");
        }
        Ok(Pair { base, quote })
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.quote)
    }
}

impl FromStr for Pair {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Pair> {
        let (base, quote) = s
            .split_once(['/', ':'])
            .with_context(|| format!("{s:?} is not a currency pair like USD/EUR"))?;
        Pair::new(Currency::parse(base)?, Currency::parse(quote)?)
    }
}

/// Checks a rate: plain digits (no exponent, as for amounts), above zero,
/// at most [`MAX_RATE_PLACES`] places, sane size.
pub fn validate_rate(text: &str) -> anyhow::Result<Decimal> {
    let rate = Decimal::parse_typed(text).with_context(|| format!("invalid rate {text:?}"))?;
    let rate = rate.normalized();
    if rate.is_negative() || rate.is_zero() {
        bail!("a rate must be greater than zero, got {text}");
    }
    if rate.scale() > MAX_RATE_PLACES {
        bail!("rate {text} has more than {MAX_RATE_PLACES} decimal places");
    }
    if rate.mantissa() >= 10i128.pow(18) {
        bail!("rate {text} is too large");
    }
    Ok(rate)
}

/// A stored rate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rate {
    pub base: String,
    pub quote: String,
    pub rate: Decimal,
    pub updated_at: String,
}

/// A rate as `--output json` prints it: the rate a string with its digits
/// (`"0.9215"`); the stored JSON keeps its number.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Rate)]
pub struct RateView<'a> {
    pub base: &'a str,
    pub quote: &'a str,
    #[serde(serialize_with = "output::decimal_text")]
    #[schema(value_type = String, example = "0.9215")]
    pub rate: Decimal,
    pub updated_at: &'a str,
}

impl<'a> From<&'a Rate> for RateView<'a> {
    fn from(r: &'a Rate) -> Self {
        RateView {
            base: &r.base,
            quote: &r.quote,
            rate: r.rate,
            updated_at: &r.updated_at,
        }
    }
}

/// A rate change as printed (`rates set`, `rates import`): the event's
/// fields, rates as strings, and its time named `updated_at` as `rates list`
/// names it (the event on `rate_changes` keeps `changed_at`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RateChange)]
pub struct RateChangeView<'a> {
    pub event_id: &'a str,
    pub pair: &'a str,
    pub base: &'a str,
    pub quote: &'a str,
    #[serde(serialize_with = "output::decimal_text")]
    #[schema(value_type = String)]
    pub rate: Decimal,
    #[schema(value_type = Option<String>)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "output::optional_decimal_text"
    )]
    pub previous_rate: Option<Decimal>,
    pub updated_at: &'a str,
}

impl<'a> From<&'a RateChangeEvent> for RateChangeView<'a> {
    fn from(e: &'a RateChangeEvent) -> Self {
        RateChangeView {
            event_id: &e.event_id,
            pair: &e.pair,
            base: &e.base,
            quote: &e.quote,
            rate: e.rate,
            previous_rate: e.previous_rate,
            updated_at: &e.changed_at,
        }
    }
}

/// One rate change, printed (as [`RateChangeView`]).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ShownChange(#[serde(serialize_with = "serialize_change")] pub RateChangeEvent);

fn serialize_change<S: serde::Serializer>(
    change: &RateChangeEvent,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    RateChangeView::from(change).serialize(serializer)
}

/// Serializes rate changes for output, as [`RateChangeView`]s.
pub fn serialize_changes<S: serde::Serializer>(
    changes: &[RateChangeEvent],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(changes.iter().map(RateChangeView::from))
}

/// A table of rates.
#[derive(Debug)]
pub struct RateList(pub Vec<Rate>);

impl Serialize for RateList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(RateView::from))
    }
}

impl Report for RateList {
    fn render(&self) -> Rendered {
        let mut table = output::table(["pair", "rate", "updated_at"]);
        for r in &self.0 {
            table.add_row(vec![
                format!("{}/{}", r.base, r.quote),
                r.rate.to_string(),
                r.updated_at.clone(),
            ]);
        }
        Rendered::Table(table)
    }
}

/// Every stored rate, sorted by base then quote.
pub async fn sorted(redis: &mut Redis) -> anyhow::Result<Vec<Rate>> {
    let mut list: Vec<_> = all(redis).await?.into_values().collect();
    list.sort_by(|a, b| (&a.base, &a.quote).cmp(&(&b.base, &b.quote)));
    Ok(list)
}

/// Every stored rate, by pair.
pub async fn all(redis: &mut Redis) -> anyhow::Result<HashMap<Pair, Rate>> {
    let stored: HashMap<String, String> =
        redis.hgetall(keys::RATES).await.context("reading rates")?;
    let mut rates = HashMap::new();
    for (field, json) in stored {
        let (Ok(pair), Ok(rate)) = (field.parse::<Pair>(), serde_json::from_str::<Rate>(&json))
        else {
            tracing::warn!("ignoring unreadable rate {field}: {json}");
            continue;
        };
        // Written by another client, perhaps: a rate is a divisor when inverted.
        if let Err(e) = validate_rate(&rate.rate.to_string()) {
            tracing::warn!("ignoring rate {field}: {e:#}");
            continue;
        }
        rates.insert(pair, rate);
    }
    Ok(rates)
}

/// How a conversion found its rate.
#[derive(Debug, Clone)]
pub struct Route {
    pub legs: Vec<Leg>,
    /// `same currency`, `direct`, `inverse`, or `cross via USD`.
    pub how: String,
}

/// The direct rate, else the inverse, else a cross rate through `pivot`.
pub fn find_route(
    rates: &HashMap<Pair, Rate>,
    from: Currency,
    to: Currency,
    pivot: Currency,
) -> Option<Route> {
    if from == to {
        return Some(Route {
            legs: Vec::new(),
            how: "same currency".into(),
        });
    }
    let leg = |from: Currency, to: Currency| -> Option<Leg> {
        let stored = |base, quote| rates.get(&Pair { base, quote }).map(|r| r.rate);
        match (stored(from, to), stored(to, from)) {
            (Some(rate), _) => Some(Leg {
                base: from,
                quote: to,
                rate,
                inverted: false,
            }),
            (None, Some(rate)) => Some(Leg {
                base: to,
                quote: from,
                rate,
                inverted: true,
            }),
            (None, None) => None,
        }
    };
    if let Some(single) = leg(from, to) {
        let how = if single.inverted { "inverse" } else { "direct" };
        return Some(Route {
            legs: vec![single],
            how: how.into(),
        });
    }
    if from == pivot || to == pivot {
        return None;
    }
    let first = leg(from, pivot)?;
    let second = leg(pivot, to)?;
    Some(Route {
        legs: vec![first, second],
        how: format!("cross via {pivot}"),
    })
}

static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- KEYS: rates hash. ARGV: pair, new rate JSON. Returns the previous JSON or false.
local previous = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return previous
"#,
    )
});

static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
-- Puts the previous rate back if ours is still the current one.
-- KEYS: rates hash. ARGV: pair, our JSON, previous JSON ('' = none)
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"#,
    )
});

/// Stores a rate and publishes its change (with the previous rate); if the
/// broker does not acknowledge, the previous rate is put back.
pub async fn set(
    redis: &mut Redis,
    producer: &FutureProducer,
    topic: &str,
    pair: Pair,
    rate: Decimal,
) -> anyhow::Result<RateChangeEvent> {
    let changed_at = crate::clock::now_rfc3339();
    let stored = Rate {
        base: pair.base.code().into(),
        quote: pair.quote.code().into(),
        rate,
        updated_at: changed_at.clone(),
    };
    let json = serde_json::to_string(&stored)?;
    let field = pair.to_string();
    let previous: Option<String> = SWAP
        .invocation()
        .key(keys::RATES)
        .arg(&field)
        .arg(&json)
        .invoke_async(redis)
        .await
        .with_context(|| format!("storing rate {field}"))?;
    let previous_rate = previous
        .as_deref()
        .and_then(|p| serde_json::from_str::<Rate>(p).ok())
        .map(|r| r.rate);
    let event = RateChangeEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        pair: field.clone(),
        base: stored.base.clone(),
        quote: stored.quote.clone(),
        rate,
        previous_rate,
        changed_at,
    };
    if let Err(e) = produce_all(producer, &[event.to_outgoing(topic)]).await {
        let _: i64 = RESTORE
            .invocation()
            .key(keys::RATES)
            .arg(&field)
            .arg(&json)
            .arg(previous.unwrap_or_default())
            .invoke_async(redis)
            .await
            .context("putting the previous rate back")?;
        return Err(e.context(format!("rate {field} was not published; it is unchanged")));
    }
    Ok(event)
}

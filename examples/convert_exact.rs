//! Exact currency conversion: store two rates (`rates::set`, which also
//! announces each change on `rate_changes`), read every rate back
//! (`rates::all`), and convert with `rates::convert::compute`: the direct
//! rate, else the inverse of the opposite pair, else a cross rate through
//! the pivot (USD). No float anywhere: the legs multiply as an exact
//! fraction and the result is rounded once, half to even, to the target's
//! minor unit.
//!
//! Rates are global (the Redis hash `rates`): this sets USD/MXN and USD/ZAR,
//! pairs the rest of the project leaves alone, so the figures below hold.
//!
//! Needs the local stack (`scripts/stack.sh up`):
//!   cargo run --example convert_exact
//!
//! Prints:
//!   rate USD/MXN 17.0525
//!   rate USD/ZAR 18.321
//!   100.00 USD = 1705.25 MXN (direct: USD/MXN 17.0525)
//!   1000.00 MXN = 58.64 USD (inverse: USD/MXN 17.0525 inverted)
//!   250.00 ZAR = 232.69 MXN (cross via USD: USD/ZAR 18.321 inverted, USD/MXN 17.0525)

mod common;

use payctl::config::Topics;
use payctl::money::Currency;
use payctl::rates::convert::{compute, Conversion};
use payctl::rates::{self, Pair};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kafka = common::kafka();
    let mut redis = common::redis().connect().await?;
    let topics = Topics::default();
    let producer = kafka.producer()?;

    // Units of QUOTE per unit of BASE. `validate_rate` is the check
    // `payctl rates set` makes (above zero, at most 12 places); it also
    // drops trailing zeros: 18.3210 is stored as 18.321.
    for (pair, rate) in [("USD/MXN", "17.0525"), ("USD/ZAR", "18.3210")] {
        let pair: Pair = pair.parse()?;
        rates::set(
            &mut redis,
            &producer,
            &topics.rate_changes,
            pair,
            rates::validate_rate(rate)?,
        )
        .await?;
    }

    let stored = rates::all(&mut redis).await?;
    for pair in ["USD/MXN", "USD/ZAR"] {
        let rate = &stored[&pair.parse::<Pair>()?];
        println!("rate {pair} {}", rate.rate);
    }

    let pivot = Currency::parse("USD")?;
    for (amount, from, to) in [
        ("100", "USD", "MXN"),
        ("1000", "MXN", "USD"),
        ("250", "ZAR", "MXN"),
    ] {
        let conversion = compute(&stored, amount.parse()?, from, to, pivot)?;
        println!("{}", describe(&conversion));
    }
    Ok(())
}

/// `100.00 USD = 1705.25 MXN (direct: USD/MXN 17.0525)`.
fn describe(c: &Conversion) -> String {
    let legs: Vec<String> = c
        .legs
        .iter()
        .map(|leg| {
            let inverted = if leg.inverted { " inverted" } else { "" };
            format!("{} {}{inverted}", leg.pair, leg.rate)
        })
        .collect();
    format!(
        "{} {} = {} {} ({}: {})",
        c.amount,
        c.from,
        c.result,
        c.to,
        c.route,
        legs.join(", ")
    )
}

//! `payctl rates set`: store a rate and announce the change.

use serde::Serialize;

use crate::events::RateChangeEvent;
use crate::money::Currency;
use crate::output::{self, Output, Rendered, Report};
use crate::rates::{self, Pair};
use crate::store::Redis;

/// Set the rate of a pair (units of QUOTE per BASE) and publish a rate_changes event.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl rates set USD EUR 0.9215\n  payctl rates set EUR GBP 0.8581 --output json"
)]
pub struct Args {
    /// Base currency.
    pub base: String,
    /// Quote currency.
    pub quote: String,
    /// Units of QUOTE per unit of BASE, exact decimal (at most 12 places).
    #[arg(allow_hyphen_values = true)]
    pub rate: String,
}

#[derive(Serialize)]
#[serde(transparent)]
pub(crate) struct Changes(
    #[serde(serialize_with = "rates::serialize_changes")] pub Vec<RateChangeEvent>,
);

impl Report for Changes {
    fn render(&self) -> Rendered {
        let mut table = output::table(["pair", "rate", "previous", "updated_at"]);
        for c in &self.0 {
            let previous = c
                .previous_rate
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            table.add_row(vec![
                c.pair.clone(),
                c.rate.to_string(),
                previous,
                c.changed_at.clone(),
            ]);
        }
        Rendered::Table(table)
    }
}

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    output: Output,
) -> anyhow::Result<()> {
    let pair = Pair::new(Currency::parse(&args.base)?, Currency::parse(&args.quote)?)?;
    let rate = rates::validate_rate(&args.rate)?;
    let change = rates::set(redis, producer, topic, pair, rate).await?;
    output.emit(&Changes(vec![change]))
}

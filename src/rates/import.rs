//! `payctl rates import`: set many rates from a CSV file.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::money::{Currency, Decimal};
use crate::output::Output;
use crate::rates::{self, set::Changes, Pair};
use crate::store::Redis;

/// Set rates from a CSV file with the header base,quote,rate. Every row is
/// checked before any rate is set.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  payctl rates import rates.csv      # base,quote,rate\\nUSD,EUR,0.9215"
)]
pub struct Args {
    /// CSV file: base,quote,rate.
    pub file: PathBuf,
}

fn parse(text: &str) -> anyhow::Result<Vec<(Pair, Decimal)>> {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        if line.trim().is_empty()
            || (n == 0
                && cells
                    .first()
                    .is_some_and(|c| c.eq_ignore_ascii_case("base")))
        {
            continue;
        }
        let row = || -> anyhow::Result<(Pair, Decimal)> {
            let [base, quote, rate] = cells[..] else {
                bail!("expected base,quote,rate");
            };
            Ok((
                Pair::new(Currency::parse(base)?, Currency::parse(quote)?)?,
                rates::validate_rate(rate)?,
            ))
        };
        match row() {
            Ok(r) => rows.push(r),
            Err(e) => problems.push(format!("line {}: {e:#}", n + 1)),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} invalid rows; no rate was set:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(rows)
}

pub async fn run(
    args: Args,
    redis: &mut Redis,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    output: Output,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut changes = Vec::new();
    for (pair, rate) in parse(&text)? {
        changes.push(rates::set(redis, producer, topic, pair, rate).await?);
    }
    output.emit(&Changes(changes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checks_every_row() {
        let rows = super::parse("base,quote,rate\nUSD,EUR,0.92\n\nEUR,GBP,0.85\n").unwrap();
        assert_eq!(rows.len(), 2);
        let err = super::parse("USD,EUR,0\nUSD,XYZ,1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("line 2"), "{err}");
    }
}

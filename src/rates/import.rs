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
    /// CSV file: base,quote,rate (`-`: standard input).
    pub file: PathBuf,
}

/// Reads `base,quote,rate` rows with the `csv` crate (quotes, CRLF); a
/// first row naming `base` is the header. Every bad row is listed.
fn parse(text: &str) -> anyhow::Result<Vec<(Pair, Decimal)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                let is_header = first
                    && record
                        .get(0)
                        .is_some_and(|c| c.eq_ignore_ascii_case("base"));
                first = false;
                if is_header || (record.len() == 1 && record[0].is_empty()) {
                    continue;
                }
                let row = || -> anyhow::Result<(Pair, Decimal)> {
                    let [base, quote, rate] = [0, 1, 2].map(|i| record.get(i).unwrap_or_default());
                    if record.len() != 3 {
                        bail!("expected base,quote,rate, got {} fields", record.len());
                    }
                    Ok((
                        Pair::new(Currency::parse(base)?, Currency::parse(quote)?)?,
                        rates::validate_rate(rate)?,
                    ))
                };
                match row() {
                    Ok(r) => rows.push(r),
                    Err(e) => problems.push(format!("line {line}: {e:#}")),
                }
            }
            Err(e) => {
                first = false;
                problems.push(format!("line {line}: {e}"));
                if e.is_io_error() {
                    break;
                }
            }
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
    let bytes = crate::input::read(&args.file)?;
    let text = crate::input::text(&bytes, &args.file)?;
    let rows = parse(text)
        .with_context(|| format!("reading rates from {}", crate::input::display(&args.file)))?;
    let mut changes = Vec::new();
    for (pair, rate) in rows {
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

    #[test]
    fn reads_csv_as_the_format_defines_it() {
        let rows = super::parse("Base,Quote,Rate\r\n\"USD\",EUR,\"0.92\"\r\n").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.to_string(), "0.92");
        let err = super::parse("base,quote,rate\nUSD,EUR,1e2\nUSD,EUR,1,2\nUSD,EUR\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 invalid rows"), "{err}");
        assert!(err.contains("line 2: invalid rate \"1e2\""), "{err}");
        assert!(
            err.contains("line 3: expected base,quote,rate, got 4 fields"),
            "{err}"
        );
        assert!(
            err.contains("line 4: expected base,quote,rate, got 2 fields"),
            "{err}"
        );
    }
}

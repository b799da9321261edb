//! The one place that writes to stdout: tables for people, JSON for scripts.

use std::io::{self, IsTerminal, Write as _};

use indicatif::{ProgressBar, ProgressStyle};

use comfy_table::{presets::UTF8_FULL_CONDENSED, ColumnConstraint, ContentArrangement, Table};
use serde::{Serialize, Serializer};

use crate::money::{Currency, Decimal};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable tables and lines.
    Table,
    /// One JSON document per result, for jq and scripts.
    Json,
}

/// Something a command prints: it knows its table form; its JSON form is
/// its `Serialize` impl.
pub trait Report: Serialize {
    /// The human-readable form.
    fn render(&self) -> Rendered;
}

/// The human-readable form of a [`Report`].
pub enum Rendered {
    /// A bare line, for values a shell captures (`id=$(payctl transfer initiate …)`).
    Line(String),
    /// A table with a header row.
    Table(Table),
}

/// A table with payctl's look and the given header.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// A two-column "field | value" table for one record.
pub fn record_table<'a>(rows: impl IntoIterator<Item = (&'a str, String)>) -> Table {
    let mut t = table(["field", "value"]);
    for (field, value) in rows {
        t.add_row(vec![field.to_string(), value]);
    }
    t
}

/// Money and rates in JSON output are strings with their digits
/// (`"12.50"`), never JSON numbers, which jq, Python and JavaScript read as
/// floats. (Records on topics and in Redis keep the types their formats give
/// them; only what payctl prints goes through these.)
pub fn decimal_text<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// [`decimal_text`] for an optional value: `null` when absent.
pub fn optional_decimal_text<S: Serializer>(
    value: &Option<Decimal>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

/// An amount as printed: at least the digits of its currency (`12.5` USD is
/// `12.50`, `1500` JPY is `1500`); a digit more than the currency has, as a
/// record written by another service may carry, is kept, never cut. An
/// unknown or missing currency leaves the digits as they are.
pub fn amount_text(amount: Decimal, currency: Option<&str>) -> String {
    let places = currency
        .and_then(|code| Currency::parse(code).ok())
        .map_or(0, |c| c.exponent());
    if amount.scale() >= places {
        return amount.to_string();
    }
    let factor = 10i128.pow(places - amount.scale());
    match amount.mantissa().checked_mul(factor) {
        Some(mantissa) => Decimal::new(mantissa, places).to_string(),
        None => amount.to_string(),
    }
}

/// Writes reports to stdout in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    format: Format,
}

impl Output {
    /// An output in `format`.
    pub fn new(format: Format) -> Output {
        Output { format }
    }

    /// The chosen format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Prints one report. A closed pipe (`| head`) is not an error. This
    /// run's secrets are scrubbed from it (a report may quote an error of
    /// librdkafka's, which names the setting it refused and its value);
    /// records a command passes through (`topics consume`) are not reports.
    pub fn emit<R: Report + ?Sized>(&self, report: &R) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Json => serde_json::to_string(report)?,
            Format::Table => match report.render() {
                Rendered::Line(line) => line,
                Rendered::Table(mut table) => {
                    keep_words_whole(&mut table);
                    table.to_string()
                }
            },
        };
        line(&crate::config::scrub(&text)).map(|_| ())
    }
}

/// Writes one line to stdout. Returns `false` once the reader has gone
/// (`payctl topics consume … | head`): not an error, a reason to stop.
pub fn line(text: &str) -> anyhow::Result<bool> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Asks `question` on the terminal (stderr) and reads the answer from
/// stdin: `true` only for an answer starting with y.
pub fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::BufRead as _;
    eprint!("{question} [y/N] ");
    io::stderr().flush().ok();
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    Ok(answer.trim().to_ascii_lowercase().starts_with('y'))
}

/// `1 payment`, `2 payments`: a count with its noun.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Longest id echoed whole in a message; a longer one is shown by its
/// prefix and its length.
const ID_SHOWN: usize = 64;

/// An id as an error message shows it: quoted, and cut to a prefix and its
/// length when it is long (`"aaaa…" (100000 characters)`), so a bad
/// 100,000-character id does not fill the terminal.
pub fn id_for_message(id: &str) -> String {
    let length = id.chars().count();
    if length <= ID_SHOWN {
        return format!("{id:?}");
    }
    let prefix: String = id.chars().take(32).collect();
    format!("{prefix:?}… ({length} characters)")
}

/// A progress bar on stderr, shown only to a person at a terminal: a rate in
/// whole items per second (`5065/s`, not `5,065.3907/s`).
pub fn progress_bar(total: u64, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(progress_style());
    bar
}

fn progress_style() -> ProgressStyle {
    ProgressStyle::with_template("{bar:40} {pos}/{len} {rate} eta {eta}")
        .expect("a valid progress template")
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
}

/// Never breaks an id over lines: a column whose cells are all single words
/// (ids, amounts, times) keeps its content's width, and only columns of
/// prose (reasons, errors) wrap; a table wider than the terminal is left so.
fn keep_words_whole(table: &mut Table) {
    let columns = table.column_count();
    let mut prose = vec![false; columns];
    for row in table.row_iter() {
        for (i, cell) in row.cell_iter().enumerate() {
            if i < columns && cell.content().contains(char::is_whitespace) {
                prose[i] = true;
            }
        }
    }
    for (i, prose) in prose.into_iter().enumerate() {
        if let (false, Some(column)) = (prose, table.column_mut(i)) {
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_with_their_currencys_digits() {
        let dec = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(amount_text(dec("12.5"), Some("USD")), "12.50");
        assert_eq!(amount_text(dec("125"), Some("usd")), "125.00");
        assert_eq!(amount_text(dec("1500"), Some("JPY")), "1500");
        assert_eq!(amount_text(dec("0.1"), Some("KWD")), "0.100");
        // More digits than the currency has are kept, never cut.
        assert_eq!(amount_text(dec("1.005"), Some("USD")), "1.005");
        assert_eq!(amount_text(dec("7.5"), None), "7.5");
        assert_eq!(amount_text(dec("7.5"), Some("XYZ")), "7.5");
        let text = serde_json::to_string(&RatesOnly(dec("0.9215"))).unwrap();
        assert_eq!(text, r#""0.9215""#);
    }

    #[derive(Serialize)]
    struct RatesOnly(#[serde(serialize_with = "decimal_text")] Decimal);
}

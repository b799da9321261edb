//! The one place that writes to stdout: tables for people, JSON for scripts.

use std::io::{self, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};

use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::Serialize;

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

    /// Prints one report. A closed pipe (`| head`) is not an error.
    pub fn emit<R: Report + ?Sized>(&self, report: &R) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Json => serde_json::to_string(report)?,
            Format::Table => match report.render() {
                Rendered::Line(line) => line,
                Rendered::Table(table) => table.to_string(),
            },
        };
        line(&text).map(|_| ())
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

/// A progress bar on stderr, shown only to a person at a terminal.
pub fn progress_bar(total: u64, wanted: bool) -> ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid progress template"),
    );
    bar
}

//! The rows of a `transfer initiate --file`, read as a stream, as often as
//! the run needs them: memory stays flat whatever the file's size.
//!
//! A file is read three times (the accounts it names, every row checked,
//! then written chunk by chunk); standard input, which can be read only
//! once, is first copied to a temporary file that is removed afterwards.
//! JSON lines are read with serde_json one line at a time, CSV with the
//! `csv` crate one record at a time; a UTF-8 byte-order mark is skipped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::initiate::TransferRequest;
use crate::money::Decimal;

/// One row as read: the request, or why it cannot be read (naming its row
/// and line).
pub type Row = Result<TransferRequest, String>;

/// A file of transfer requests that can be read again.
pub struct RequestSource {
    path: PathBuf,
    /// How error messages name it.
    pub name: String,
    /// Hex of the first 128 bits of the SHA-256 of every byte.
    pub digest: String,
    csv: bool,
    /// The copy of standard input, removed on drop.
    _spool: Option<Spool>,
}

/// A temporary file removed when dropped.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const BUFFER: usize = 256 * 1024;

impl RequestSource {
    /// Opens `path` (`-`: standard input, spooled), reads it once for its
    /// digest and its format (CSV unless the first non-blank line opens a
    /// JSON object).
    pub fn open(path: &Path) -> anyhow::Result<RequestSource> {
        let name = crate::input::display(path);
        let (path, spool) = if path == Path::new("-") {
            let spooled = std::env::temp_dir().join(format!(
                "payctl-stdin-{}.rows",
                uuid::Uuid::new_v4().simple()
            ));
            let spool = Spool(spooled.clone());
            let mut out = File::create(&spooled)
                .with_context(|| format!("spooling standard input to {}", spooled.display()))?;
            std::io::copy(&mut std::io::stdin().lock(), &mut out)
                .context("reading standard input")?;
            (spooled, Some(spool))
        } else {
            (path.to_path_buf(), None)
        };
        let mut reader = BufReader::with_capacity(
            BUFFER,
            File::open(&path).with_context(|| format!("reading {name}"))?,
        );
        use sha2::{Digest as _, Sha256};
        let mut hash = Sha256::new();
        loop {
            let chunk = reader
                .fill_buf()
                .with_context(|| format!("reading {name}"))?;
            if chunk.is_empty() {
                break;
            }
            hash.update(chunk);
            let used = chunk.len();
            reader.consume(used);
        }
        // JSON lines when the first non-blank line opens an object.
        let mut first =
            BufReader::new(File::open(&path).with_context(|| format!("reading {name}"))?);
        let mut line = Vec::new();
        let mut json = false;
        let mut number = 0;
        loop {
            line.clear();
            if first
                .read_until(b'\n', &mut line)
                .with_context(|| format!("reading {name}"))?
                == 0
            {
                break;
            }
            number += 1;
            let bytes = if number == 1 {
                crate::input::strip_bom(&line)
            } else {
                &line
            };
            if !bytes.trim_ascii().is_empty() {
                json = bytes.trim_ascii_start().starts_with(b"{");
                break;
            }
        }
        let csv = !json;
        let digest = super::initiate::digest_text(&hash.finalize());
        Ok(RequestSource {
            path,
            name,
            digest,
            csv,
            _spool: spool,
        })
    }

    /// The rows, from the start of the file.
    pub fn rows(&self) -> anyhow::Result<Box<dyn Iterator<Item = Row>>> {
        let file = File::open(&self.path).with_context(|| format!("reading {}", self.name))?;
        let reader = BufReader::with_capacity(BUFFER, file);
        if self.csv {
            Ok(Box::new(CsvRows::new(reader)?))
        } else {
            Ok(Box::new(JsonRows::new(reader)))
        }
    }
}

/// One JSON object per line; blank lines are skipped and not counted as rows.
pub struct JsonRows<R> {
    reader: R,
    line: Vec<u8>,
    lines: usize,
    rows: usize,
    failed: bool,
}

impl<R: BufRead> JsonRows<R> {
    pub fn new(reader: R) -> JsonRows<R> {
        JsonRows {
            reader,
            line: Vec::new(),
            lines: 0,
            rows: 0,
            failed: false,
        }
    }
}

impl<R: BufRead> Iterator for JsonRows<R> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        if self.failed {
            return None;
        }
        loop {
            self.line.clear();
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    // Nothing after an I/O error can be trusted.
                    self.failed = true;
                    self.rows += 1;
                    return Some(Err(format!("row {}: {e}", self.rows)));
                }
            }
            self.lines += 1;
            let bytes = if self.lines == 1 {
                crate::input::strip_bom(&self.line)
            } else {
                &self.line
            };
            if bytes.trim_ascii().is_empty() {
                continue;
            }
            self.rows += 1;
            let (row, line) = (self.rows, self.lines);
            let parsed = std::str::from_utf8(bytes)
                .map_err(|e| format!("not UTF-8: {e}"))
                .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()));
            return Some(parsed.map_err(|e| format!("row {row} (line {line}): {e}")));
        }
    }
}

/// The columns a CSV header may name, by the field each fills.
const CSV_COLUMNS: [(&str, &[&str]); 5] = [
    ("from", &["from", "sender_id"]),
    ("to", &["to", "receiver_id"]),
    ("amount", &["amount"]),
    ("currency", &["currency"]),
    ("idempotency_key", &["idempotency_key"]),
];

/// CSV as RFC 4180 has it (quotes, commas and line breaks inside quotes,
/// CRLF), read by the `csv` crate. The header names the columns; every row
/// has as many fields as the header.
pub struct CsvRows<R> {
    records: Option<csv::StringRecordsIntoIter<R>>,
    width: usize,
    required: [usize; 3],
    currency: Option<usize>,
    key: Option<usize>,
    rows: usize,
}

impl<R: Read> CsvRows<R> {
    /// Reads the header; an empty input has no rows.
    pub fn new(input: R) -> anyhow::Result<CsvRows<R>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(input);
        let header = reader.headers().context("reading the CSV header")?.clone();
        let names: Vec<String> = header
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c = if i == 0 {
                    c.trim_start_matches('\u{feff}')
                } else {
                    c
                };
                c.to_ascii_lowercase()
            })
            .collect();
        if names.iter().all(|n| n.is_empty()) {
            return Ok(CsvRows {
                records: None,
                width: 0,
                required: [0; 3],
                currency: None,
                key: None,
                rows: 0,
            });
        }
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| {
                !CSV_COLUMNS
                    .iter()
                    .any(|(_, known)| known.contains(&n.as_str()))
            })
            .collect();
        if !unknown.is_empty() {
            bail!(
                "unknown CSV column {}: the header names from, to, amount and optionally \
                 currency, idempotency_key (sender_id and receiver_id work for from and to)",
                unknown
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut column = [None; 5];
        for (slot, (field, known)) in column.iter_mut().zip(CSV_COLUMNS) {
            let mut at = names
                .iter()
                .enumerate()
                .filter(|(_, n)| known.contains(&n.as_str()));
            *slot = at.next().map(|(i, _)| i);
            if at.next().is_some() {
                bail!("the CSV header names the {field} column twice");
            }
        }
        let [Some(from), Some(to), Some(amount), currency, key] = column else {
            bail!(
                "CSV header must name from, to and amount columns (got {:?})",
                header.iter().collect::<Vec<_>>().join(",")
            );
        };
        Ok(CsvRows {
            width: header.len(),
            records: Some(reader.into_records()),
            required: [from, to, amount],
            currency,
            key,
            rows: 0,
        })
    }
}

impl<R: Read> Iterator for CsvRows<R> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        loop {
            let record = self.records.as_mut()?.next()?;
            match record {
                Ok(record) if record.len() == 1 && record[0].is_empty() => continue,
                Ok(record) => {
                    self.rows += 1;
                    let line = record.position().map_or(0, |p| p.line());
                    return Some(
                        csv_request(&record, self.width, self.required, self.currency, self.key)
                            .map_err(|e| format!("row {} (line {line}): {e}", self.rows)),
                    );
                }
                Err(e) => {
                    self.rows += 1;
                    if e.is_io_error() {
                        self.records = None;
                    }
                    return Some(Err(format!("row {}: {e}", self.rows)));
                }
            }
        }
    }
}

/// One CSV row as a request.
fn csv_request(
    record: &csv::StringRecord,
    width: usize,
    [from, to, amount]: [usize; 3],
    currency: Option<usize>,
    key: Option<usize>,
) -> Result<TransferRequest, String> {
    if record.len() != width {
        return Err(format!("{} fields, the header has {width}", record.len()));
    }
    let cell = |i: usize| Some(record[i].to_string()).filter(|c| !c.is_empty());
    let required = |i: usize, name: &str| cell(i).ok_or_else(|| format!("no {name}"));
    let amount_text = required(amount, "amount")?;
    Ok(TransferRequest {
        from: required(from, "from")?,
        to: required(to, "to")?,
        amount: Decimal::parse_typed(&amount_text).map_err(|e| format!("invalid amount: {e}"))?,
        currency: currency.and_then(cell),
        idempotency_key: key.and_then(cell),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_again_row_for_row_with_the_digest_of_every_byte() {
        let bytes = b"\xEF\xBB\xBF{\"from\":\"a\",\"to\":\"b\",\"amount\":\"1.50\"}\r\n\n{oops\n";
        let path = std::env::temp_dir().join(format!("payctl-rows-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, bytes).unwrap();
        let source = RequestSource::open(&path).unwrap();
        assert_eq!(source.digest, super::super::initiate::file_digest(bytes));
        let read = |source: &RequestSource| -> Vec<Result<String, String>> {
            source
                .rows()
                .unwrap()
                .map(|row| row.map(|r| format!("{}>{} {}", r.from, r.to, r.amount)))
                .collect()
        };
        let first = read(&source);
        assert_eq!(first[0], Ok("a>b 1.50".to_string()));
        assert!(
            first[1]
                .as_ref()
                .unwrap_err()
                .starts_with("row 2 (line 3): "),
            "{first:?}"
        );
        assert_eq!(first, read(&source), "a second pass reads the same rows");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn csv_rows_stream_with_their_line_numbers() {
        let text = "from,to,amount\r\nalice,bob,\"1,000.00\"\r\nalice,bob\r\n";
        let rows: Vec<Row> = CsvRows::new(text.as_bytes()).unwrap().collect();
        assert_eq!(rows.len(), 2);
        assert!(
            rows[0].is_err(),
            "a quoted 1,000.00 is not an amount: {rows:?}"
        );
        let short = rows[1].as_ref().unwrap_err();
        assert!(short.starts_with("row 2 (line "), "{short}");
        assert!(short.ends_with("2 fields, the header has 3"), "{short}");
        assert_eq!(CsvRows::new(&b""[..]).unwrap().count(), 0);
    }
}

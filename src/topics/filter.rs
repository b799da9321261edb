//! What `topics consume`, `transactions log` and `dlq` share: filters on a
//! message's decoded JSON fields (`--where`), where to start reading
//! (`--offset`), and kcat-style output templates (`--format`).

use std::fmt::Write as _;
use std::str::FromStr;

use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde_json::Value;

/// One `--where` filter: a top-level or dotted JSON field compared with a
/// value (`status=rejected`, `user_id!=alice`, `meta.source~^api-`).
///
/// A field's text is a string's own text, or the JSON of anything else
/// (`12.50`, `true`, `null`), so `amount=12.50` matches the number as
/// written. A missing field, or a message that is not JSON, matches no
/// `=` or `~` and every `!=`.
#[derive(Debug, Clone)]
pub struct Where {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Equal(String),
    NotEqual(String),
    Matches(regex::Regex),
}

impl FromStr for Where {
    type Err = String;

    fn from_str(text: &str) -> Result<Where, String> {
        let at = text.find(['=', '~', '!']).ok_or_else(|| {
            format!("{text:?}: expected FIELD=VALUE, FIELD!=VALUE or FIELD~REGEX")
        })?;
        let (field, rest) = text.split_at(at);
        let test = if let Some(value) = rest.strip_prefix("!=") {
            Test::NotEqual(value.to_string())
        } else if let Some(value) = rest.strip_prefix('=') {
            Test::Equal(value.to_string())
        } else if let Some(pattern) = rest.strip_prefix('~') {
            Test::Matches(
                regex::Regex::new(pattern)
                    .map_err(|e| format!("{text:?}: bad regular expression: {e}"))?,
            )
        } else {
            return Err(format!(
                "{text:?}: expected FIELD=VALUE, FIELD!=VALUE or FIELD~REGEX"
            ));
        };
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "{text:?}: the field name is empty (a.b.c for nested fields)"
            ));
        }
        Ok(Where { path, test })
    }
}

impl Where {
    /// Whether `document` (None: the message is not JSON) passes.
    pub fn passes(&self, document: Option<&Value>) -> bool {
        let text = document.and_then(|d| field(d, &self.path)).map(value_text);
        match (&self.test, text) {
            (Test::Equal(want), Some(text)) => text == *want,
            (Test::NotEqual(want), Some(text)) => text != *want,
            (Test::Matches(pattern), Some(text)) => pattern.is_match(&text),
            (Test::NotEqual(_), None) => true,
            (_, None) => false,
        }
    }
}

/// Whether a payload passes every filter (decoded once; none: all pass).
pub fn passes_all(filters: &[Where], payload: Option<&[u8]>) -> bool {
    if filters.is_empty() {
        return true;
    }
    let document: Option<Value> = payload.and_then(|p| serde_json::from_slice(p).ok());
    filters.iter().all(|f| f.passes(document.as_ref()))
}

/// The value at a dotted path; a number segment also indexes an array.
fn field<'a>(document: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(document, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Where to start reading each partition (`--offset`), as rpk's `-o` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// `start`: the oldest message.
    Start,
    /// `end`: only messages written from now on.
    End,
    /// `N`: this offset.
    At(i64),
    /// `-N`: the last N messages of each partition.
    Last(i64),
    /// `@2026-11-20T10:00:00Z` or `@-1h`: the first message at or after
    /// this instant (Unix milliseconds).
    Time(i64),
}

impl FromStr for OffsetSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<OffsetSpec, String> {
        let expected = || {
            format!("{text:?}: expected start, end, an offset N, -N (the last N), @2026-11-20T10:00:00Z or @-1h")
        };
        match text.trim() {
            "start" | "beginning" | "oldest" => Ok(OffsetSpec::Start),
            "end" | "newest" => Ok(OffsetSpec::End),
            t if t.starts_with('@') => crate::clock::parse_instant(&t[1..])
                .map(|ms| OffsetSpec::Time(ms as i64))
                .map_err(|e| format!("{text:?}: {e}")),
            t if t.starts_with('-') => match t[1..].parse::<i64>() {
                Ok(n) if n > 0 => Ok(OffsetSpec::Last(n)),
                _ => Err(expected()),
            },
            t => match t.parse::<i64>() {
                Ok(n) if n >= 0 => Ok(OffsetSpec::At(n)),
                _ => Err(expected()),
            },
        }
    }
}

/// A `--format` template: text with `%t` topic, `%p` partition, `%o`
/// offset, `%k` key, `%s` value, `%h` headers (`k=v,k=v`), `%T` timestamp
/// (Unix ms), `%%`; `\n`, `\t` and `\\` escapes.
#[derive(Debug, Clone)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Headers,
    Timestamp,
}

impl FromStr for Template {
    type Err = String;

    fn from_str(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Partition,
                    Some('o') => Piece::Offset,
                    Some('k') => Piece::Key,
                    Some('s') => Piece::Value,
                    Some('h') => Piece::Headers,
                    Some('T') => Piece::Timestamp,
                    Some('%') => {
                        literal.push('%');
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "{text:?}: unknown %{} (known: %t %p %o %k %s %h %T %%)",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                },
                '\\' => {
                    literal.push(match chars.next() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('\\') => '\\',
                        other => {
                            return Err(format!(
                                "{text:?}: unknown escape \\{} (known: \\n \\t \\\\)",
                                other.map(String::from).unwrap_or_default()
                            ))
                        }
                    });
                    continue;
                }
                c => {
                    literal.push(c);
                    continue;
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }
}

impl Template {
    /// The template filled in with `message` (a missing key, value or
    /// timestamp is empty; invalid UTF-8 replaced).
    pub fn render(&self, message: &BorrowedMessage<'_>) -> String {
        let lossy =
            |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Topic => out.push_str(message.topic()),
                Piece::Partition => write!(out, "{}", message.partition()).unwrap_or(()),
                Piece::Offset => write!(out, "{}", message.offset()).unwrap_or(()),
                Piece::Key => out.push_str(&lossy(message.key())),
                Piece::Value => out.push_str(&lossy(message.payload())),
                Piece::Headers => {
                    if let Some(headers) = message.headers() {
                        let pairs: Vec<String> = headers
                            .iter()
                            .map(|h| format!("{}={}", h.key, lossy(h.value)))
                            .collect();
                        out.push_str(&pairs.join(","));
                    }
                }
                Piece::Timestamp => {
                    if let Some(ms) = message.timestamp().to_millis() {
                        write!(out, "{ms}").unwrap_or(());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn passes(filter: &str, document: &Value) -> bool {
        filter.parse::<Where>().unwrap().passes(Some(document))
    }

    #[test]
    fn where_compares_top_level_and_dotted_fields() {
        let event = json!({"status": "rejected", "user_id": "alice", "amount": 12.50,
                           "meta": {"source": "api-7", "tags": ["a", "b"]}, "flag": true});
        assert!(passes("status=rejected", &event));
        assert!(!passes("status=completed", &event));
        assert!(passes("status!=completed", &event));
        assert!(!passes("user_id!=alice", &event));
        assert!(passes("meta.source~^api-\\d+$", &event));
        assert!(!passes("meta.source~^web", &event));
        assert!(passes("meta.tags.1=b", &event));
        assert!(passes("flag=true", &event));
        assert!(passes("missing!=x", &event));
        assert!(!passes("missing=x", &event));
        assert!(!passes("missing~.", &event));
        assert!(passes("status=rejected", &event) && passes("user_id=alice", &event));
        // A value may hold the operators' characters.
        assert!(passes("note!=a=b", &json!({"note": "x"})));
        assert!(passes("note=a=b~c", &json!({"note": "a=b~c"})));
        assert!(!passes_all(
            &["status=rejected".parse().unwrap()],
            Some(b"not json")
        ));
        assert!(passes_all(
            &["status!=rejected".parse().unwrap()],
            Some(b"not json")
        ));
    }

    #[test]
    fn a_number_is_compared_as_written() {
        let event: Value = serde_json::from_str(r#"{"amount": 12.50}"#).unwrap();
        assert!(passes("amount=12.50", &event));
        assert!(!passes("amount=12.5", &event));
    }

    #[test]
    fn bad_filters_say_what_was_expected() {
        assert!("status"
            .parse::<Where>()
            .unwrap_err()
            .contains("FIELD=VALUE"));
        assert!("=x".parse::<Where>().unwrap_err().contains("empty"));
        assert!("a..b=x".parse::<Where>().unwrap_err().contains("empty"));
        assert!("a~("
            .parse::<Where>()
            .unwrap_err()
            .contains("regular expression"));
    }

    #[test]
    fn offsets_parse_as_rpk_has_them() {
        assert_eq!("start".parse(), Ok(OffsetSpec::Start));
        assert_eq!("end".parse(), Ok(OffsetSpec::End));
        assert_eq!("42".parse(), Ok(OffsetSpec::At(42)));
        assert_eq!("-10".parse(), Ok(OffsetSpec::Last(10)));
        assert_eq!(
            "@2026-11-20T10:00:00Z".parse(),
            Ok(OffsetSpec::Time(1_795_168_800_000))
        );
        assert!(matches!("@-1h".parse(), Ok(OffsetSpec::Time(_))));
        for bad in ["-0", "soon", "@yesterday", "1.5", ""] {
            assert!(bad.parse::<OffsetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_parse_codes_and_escapes() {
        let t: Template = "%t/%p@%o %k=%s [%h] %T%%\\t\\n".parse().unwrap();
        assert_eq!(t.0.len(), 14);
        assert_eq!(t.0.last(), Some(&Piece::Text("%\t\n".into())));
        assert!("%x".parse::<Template>().unwrap_err().contains("%x"));
        assert!("\\q".parse::<Template>().unwrap_err().contains("\\q"));
    }
}

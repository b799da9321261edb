//! Wall-clock time as Unix milliseconds and RFC 3339 text.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(now_millis())
}

/// Unix milliseconds as RFC 3339 UTC, e.g. `2026-11-23T13:45:00.123Z`.
pub fn rfc3339(millis: u64) -> String {
    let secs = millis / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

/// An age such as `90s`, `15m`, `2h`, `7d` or `30` (seconds), in milliseconds.
pub fn parse_age(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("{text:?} is not an age like 90s, 15m, 2h or 7d");
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c),
        _ => (text, 's'),
    };
    let seconds_per: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    number
        .checked_mul(seconds_per * 1000)
        .filter(|&ms| ms <= (crate::config::MAX_SECONDS as u64) * 1000)
        .ok_or_else(bad)
}

/// An RFC 3339 instant (`2026-11-20T10:00:00Z`, `2026-11-20T12:00:00.5+02:00`)
/// as Unix milliseconds.
pub fn parse_rfc3339(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("{text:?} is not an RFC 3339 time like 2026-11-20T10:00:00Z");
    let b = text.trim().as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let sep = |at: usize, chars: &[u8]| b.get(at).is_some_and(|c| chars.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return Err(bad());
    }
    let (year, month, day) = (digits(0..4), digits(5..7), digits(8..10));
    let (hour, minute, second) = (digits(11..13), digits(14..16), digits(17..19));
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (year, month, day, hour, minute, second)
    else {
        return Err(bad());
    };
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(bad());
        }
        let fraction = &b[start..at.min(start + 3)];
        let scale = [100, 10, 1];
        for (i, d) in fraction.iter().enumerate() {
            millis += i64::from(d - b'0') * scale[i];
        }
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() && sep(at + 3, b":") => {
            let (Some(h), Some(m)) = (digits(at + 1..at + 3), digits(at + 4..at + 6)) else {
                return Err(bad());
            };
            let minutes = h * 60 + m;
            if sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return Err(bad()),
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let days = days_from_civil(year, month as u32, day as u32);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).map_err(|_| bad())
}

/// An instant given as RFC 3339 (`2026-11-20T10:00:00Z`) or as an age
/// before now (`-1h`, `-15m`), as Unix milliseconds.
pub fn parse_instant(text: &str) -> anyhow::Result<u64> {
    match text.trim().strip_prefix('-') {
        Some(age) => Ok(now_millis().saturating_sub(parse_age(age)?)),
        None => parse_rfc3339(text),
    }
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a (year, month, day) date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_437_296_000), "2026-11-23T12:34:56.000Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for millis in [0, 951_782_400_123, 1_795_437_296_000, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(millis)).unwrap(), millis);
        }
        assert_eq!(
            parse_rfc3339("2026-11-23T14:34:56+02:00").unwrap(),
            1_795_437_296_000
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T12:34:56.5Z").unwrap(),
            1_795_437_296_500
        );
        for bad in [
            "2026-11-23",
            "2026-02-29T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T12:34:56",
            "2026-11-23T12:34:56.Z",
            "2026-11-23T12:34:56Zjunk",
            "yesterday",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("90s").unwrap(), 90_000);
        assert_eq!(parse_age("15m").unwrap(), 900_000);
        assert_eq!(parse_age("2h").unwrap(), 7_200_000);
        assert_eq!(parse_age("1d").unwrap(), 86_400_000);
        assert_eq!(parse_age("30").unwrap(), 30_000);
        for bad in ["", "h", "1x", "-5m", "1.5h", "99999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        let before = now_millis() - 3_600_000;
        let instant = parse_instant("-1h").unwrap();
        assert!(instant >= before && instant <= before + 5_000);
    }
}

//! Exact money: decimals as text-faithful integers, currencies with their
//! minor-unit exponents, and amounts in integer minor units.
//!
//! Nothing here is ever a float. `"12.50"` and the JSON number `12.50` both
//! become 1250 minor units of a two-decimal currency; `0.1 + 0.2` is `0.3`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest amount or balance payctl accepts, in minor units (10^15).
///
/// Kept below 2^53 so every balance stays exact even where Redis' Lua sees it
/// as a double, and far above any real payment: 10 trillion dollars.
pub const MAX_MINOR_UNITS: i64 = 1_000_000_000_000_000;

/// Why a piece of text is not an acceptable amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a decimal number (expected digits like 12.50)")]
    NotANumber(String),
    #[error("amount must be greater than zero, got {0}")]
    NotPositive(String),
    #[error("{amount} has more decimal places than {currency} allows ({exponent})")]
    TooPrecise {
        amount: String,
        currency: &'static str,
        exponent: u32,
    },
    #[error("{amount} is too large: at most {max} {currency}")]
    TooLarge {
        amount: String,
        max: String,
        currency: &'static str,
    },
    #[error("{0} is too large or too long: at most 36 digits")]
    TooLong(String),
    #[error("{0} has too many decimal places: at most 36")]
    TooManyPlaces(String),
    #[error("{0:?} is in scientific notation: write it in plain digits, like 1000 or 12.50")]
    Exponent(String),
    #[error("unknown currency {code:?}: not an ISO 4217 code{hint}")]
    UnknownCurrency { code: String, hint: String },
    #[error("{0} has no minor unit in ISO 4217 (a precious metal, fund or special unit): not a currency to pay in")]
    NoMinorUnit(String),
    #[error("{code} is no longer an ISO 4217 currency: it was replaced by {by}")]
    Superseded { code: String, by: String },
}

/// An ISO 4217 currency with the number of digits after its decimal point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

impl Currency {
    /// Looks a currency code up (case-insensitive) in ISO 4217's list of
    /// current currencies (the `iso_currency` crate's copy of the
    /// standard's table). A code without a minor unit (gold, XDR) or one
    /// the standard has replaced is refused; an unknown one is answered
    /// with the nearest codes.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        let Some(iso) = iso_currency::Currency::from_code(&upper) else {
            return Err(MoneyError::UnknownCurrency {
                code: code.to_string(),
                hint: suggestion(&upper),
            });
        };
        if let Some(by) = replaced_by(iso) {
            return Err(MoneyError::Superseded {
                code: iso.code().to_string(),
                by: by.code().to_string(),
            });
        }
        match iso.exponent() {
            Some(exponent) => Ok(Currency {
                code: iso.code(),
                exponent: u32::from(exponent),
            }),
            None => Err(MoneyError::NoMinorUnit(iso.code().to_string())),
        }
    }

    /// The three-letter code, e.g. `USD`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point: 2 for USD, 0 for JPY, 3 for KWD.
    pub fn exponent(&self) -> u32 {
        self.exponent
    }
}

/// Codes the `iso_currency` crate marks as replaced that ISO 4217 still
/// lists as current. Amendment 170 (1 October 2021) added VED for the
/// digital bolívar and kept VES as the valid code for any future
/// transaction; the crate (0.7.1) has VES replaced by VED.
const STILL_CURRENT: &[&str] = &["VES"];

/// The code that replaced `iso`, if the standard has withdrawn it.
fn replaced_by(iso: iso_currency::Currency) -> Option<iso_currency::Currency> {
    if STILL_CURRENT.contains(&iso.code()) {
        return None;
    }
    iso.is_superseded()
}

/// "; did you mean USD?" with up to three current codes one letter away
/// (or two letters swapped), or nothing when none is that near.
fn suggestion(code: &str) -> String {
    use iso_currency::IntoEnumIterator as _;
    let wanted: Vec<char> = code.chars().collect();
    let near = |candidate: &str| {
        let have: Vec<char> = candidate.chars().collect();
        if have.len() != wanted.len() {
            return false;
        }
        let differ: Vec<usize> = (0..have.len()).filter(|&i| have[i] != wanted[i]).collect();
        match differ[..] {
            [_] => true,
            [a, b] => b == a + 1 && have[a] == wanted[b] && have[b] == wanted[a],
            _ => false,
        }
    };
    // Current payment currencies only (no funds, metals or replaced codes),
    // those sharing the longest start with what was typed first.
    let shared_start = |c: &str| c.chars().zip(&wanted).take_while(|(a, b)| a == *b).count();
    let mut codes: Vec<&'static str> = iso_currency::Currency::iter()
        .filter(|c| {
            c.exponent().is_some() && !c.is_fund() && !c.is_special() && replaced_by(*c).is_none()
        })
        .map(|c| c.code())
        .filter(|c| near(c))
        .collect();
    codes.sort_unstable_by_key(|c| (std::cmp::Reverse(shared_start(c)), *c));
    codes.truncate(3);
    match codes.len() {
        0 => String::new(),
        _ => format!("; did you mean {}?", codes.join(" or ")),
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

/// An exact decimal number: `mantissa * 10^-scale`.
///
/// This is how amounts travel before a currency gives them meaning. Text a
/// person typed goes through [`Decimal::parse_typed`] (`12.50`, `-3`; no
/// exponent). [`FromStr`] and deserializing are lenient on purpose: they
/// also take `1e2` and `1.5E-1`, which other services put in JSON numbers
/// on topics. Every digit is kept, and a decimal serializes back to JSON as
/// a number with the same digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// Longest decimal text accepted; anything longer is not a payment amount.
const MAX_DECIMAL_TEXT: usize = 48;
/// Digits an i128 mantissa holds with room to spare.
const MAX_DIGITS: usize = 36;
/// Largest exponent accepted in `1e5` notation.
const MAX_EXPONENT: u32 = 40;

impl Decimal {
    /// A decimal from its parts: `mantissa * 10^-scale`.
    pub fn new(mantissa: i128, scale: u32) -> Decimal {
        Decimal { mantissa, scale }
    }

    /// The digits as an integer.
    pub fn mantissa(&self) -> i128 {
        self.mantissa
    }

    /// Digits after the decimal point.
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// Drops trailing zeros after the decimal point: 12.50 → 12.5.
    pub fn normalized(self) -> Decimal {
        let mut d = self;
        while d.scale > 0 && d.mantissa % 10 == 0 {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        d
    }

    /// True when the value is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.mantissa == 0
    }

    /// True when the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// Parses a decimal a person typed (a flag, a file): optional sign,
    /// digits, optional point and digits. An exponent (`1e3`) is refused:
    /// nobody writes money that way, and a stray `e` should not move 1000.
    pub fn parse_typed(text: &str) -> Result<Decimal, MoneyError> {
        let trimmed = text.trim();
        if let Some(at) = trimmed.find(['e', 'E']) {
            let (plain, exponent) = (&trimmed[..at], &trimmed[at + 1..]);
            let exponent = exponent.strip_prefix(['-', '+']).unwrap_or(exponent);
            let is_integer = !exponent.is_empty() && exponent.bytes().all(|b| b.is_ascii_digit());
            if is_integer && Decimal::from_str(plain).is_ok() {
                return Err(MoneyError::Exponent(text.to_string()));
            }
            return Err(MoneyError::NotANumber(text.to_string()));
        }
        Decimal::from_str(text)
    }
}

/// Deserializes a [`Decimal`] a person typed (a row of a file): a JSON
/// number or string, read by [`Decimal::parse_typed`], so no exponent.
pub fn deserialize_typed<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let text = decimal_text(deserializer)?;
    Decimal::parse_typed(&text).map_err(serde::de::Error::custom)
}

/// The text of a JSON number (digits as written) or string.
fn decimal_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::String(s) => Ok(s),
        other => Err(serde::de::Error::custom(format!(
            "amount must be a number or a string of digits, got {other}"
        ))),
    }
}

/// In the HTTP API's OpenAPI document: what [`deserialize_typed`] takes, a
/// string or a JSON number, both read digit by digit.
impl utoipa::PartialSchema for Decimal {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$"))
                    .examples(["12.50"]),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some(
                "An exact decimal amount, as a string (\"12.50\") or a JSON number; \
                 never rounded, refused with more places than the currency has",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Decimal {}

impl FromStr for Decimal {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || MoneyError::NotANumber(text.to_string());
        let s = text.trim();
        if s.is_empty() || s.len() > MAX_DECIMAL_TEXT {
            return Err(bad());
        }
        let (number, exponent) = match s.find(['e', 'E']) {
            Some(at) => {
                let exp: i32 = s[at + 1..].parse().map_err(|_| bad())?;
                if exp < -(MAX_EXPONENT as i32) {
                    return Err(MoneyError::TooManyPlaces(text.to_string()));
                }
                if exp > MAX_EXPONENT as i32 {
                    return Err(MoneyError::TooLong(text.to_string()));
                }
                (&s[..at], exp)
            }
            None => (s, 0),
        };
        let (negative, unsigned) = match number.as_bytes().first() {
            Some(b'-') => (true, &number[1..]),
            Some(b'+') => (false, &number[1..]),
            _ => (false, number),
        };
        let (int_part, frac_part) = match unsigned.split_once('.') {
            Some((i, f)) => (i, f),
            None => (unsigned, ""),
        };
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty())
            || !all_digits(int_part)
            || !all_digits(frac_part)
        {
            return Err(bad());
        }
        let digits = format!("{int_part}{frac_part}");
        let significant = digits.trim_start_matches('0');
        if significant.len() > MAX_DIGITS {
            return Err(MoneyError::TooLong(text.to_string()));
        }
        let mut mantissa: i128 = if significant.is_empty() {
            0
        } else {
            significant.parse().map_err(|_| bad())?
        };
        let mut scale = frac_part.len() as i64 - i64::from(exponent);
        if mantissa == 0 {
            scale = scale.clamp(0, MAX_DIGITS as i64);
        }
        while scale < 0 {
            mantissa = mantissa
                .checked_mul(10)
                .ok_or_else(|| MoneyError::TooLong(text.to_string()))?;
            scale += 1;
        }
        if scale > MAX_DIGITS as i64 {
            return Err(MoneyError::TooManyPlaces(text.to_string()));
        }
        if negative {
            mantissa = -mantissa;
        }
        Ok(Decimal {
            mantissa,
            scale: scale as u32,
        })
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

impl Serialize for Decimal {
    /// A JSON number with exactly these digits (`12.50`, not `12.5` or a float).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let number = serde_json::Number::from_str(&self.to_string())
            .map_err(|e| serde::ser::Error::custom(format!("decimal {self}: {e}")))?;
        number.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    /// Accepts a JSON number (digits kept exactly, an exponent too: other
    /// services write the versioned transfer service's numbers as they come) or a string of digits.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = decimal_text(deserializer)?;
        Decimal::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// A sum of money in one currency, held as integer minor units.
///
/// Balances may be zero; amounts to move are made with [`Money::amount`],
/// which refuses anything that is not a sensible payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// A positive amount to move: exact in `currency`, above zero, at most
    /// [`MAX_MINOR_UNITS`].
    pub fn amount(value: Decimal, currency: Currency) -> Result<Money, MoneyError> {
        let shown = value.to_string();
        if value.is_negative() || value.is_zero() {
            return Err(MoneyError::NotPositive(shown));
        }
        let value = value.normalized();
        if value.scale() > currency.exponent() {
            return Err(MoneyError::TooPrecise {
                amount: shown,
                currency: currency.code(),
                exponent: currency.exponent(),
            });
        }
        let factor = 10i128.pow(currency.exponent() - value.scale());
        let too_large = || MoneyError::TooLarge {
            amount: shown.clone(),
            max: Money::from_minor(MAX_MINOR_UNITS, currency).to_string(),
            currency: currency.code(),
        };
        let minor = value.mantissa().checked_mul(factor).ok_or_else(too_large)?;
        if minor > i128::from(MAX_MINOR_UNITS) {
            return Err(too_large());
        }
        Ok(Money {
            minor: minor as i64,
            currency,
        })
    }

    /// Parses text such as `12.50` as an amount in `currency`: plain digits,
    /// as a person types them (see [`Decimal::parse_typed`]).
    pub fn parse_amount(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        Money::amount(Decimal::parse_typed(text)?, currency)
    }

    /// A sum from minor units as stored (a balance, say).
    pub fn from_minor(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// Integer minor units: cents for USD.
    pub fn minor_units(&self) -> i64 {
        self.minor
    }

    /// The currency this sum is in.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The sum as an exact decimal with the currency's number of places.
    pub fn to_decimal(&self) -> Decimal {
        Decimal::new(i128::from(self.minor), self.currency.exponent())
    }
}

impl fmt::Display for Money {
    /// The plain number with the currency's places: `12.50`, `1000`, `0.125`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_decimal().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("usd").unwrap()
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn parses_amounts_exactly() {
        assert_eq!(
            Money::parse_amount("12.50", usd()).unwrap().minor_units(),
            1250
        );
        assert_eq!(
            Money::parse_amount("12.5", usd()).unwrap().minor_units(),
            1250
        );
        assert_eq!(
            Money::parse_amount("12.500", usd()).unwrap().minor_units(),
            1250
        );
        assert_eq!(Money::parse_amount("7", usd()).unwrap().minor_units(), 700);
        assert_eq!(Money::parse_amount(".5", usd()).unwrap().minor_units(), 50);
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            Money::parse_amount("1500", jpy).unwrap().minor_units(),
            1500
        );
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(
            Money::parse_amount("0.125", kwd).unwrap().minor_units(),
            125
        );
    }

    #[test]
    fn point_one_plus_point_two_is_point_three() {
        let a = Money::parse_amount("0.1", usd()).unwrap();
        let b = Money::parse_amount("0.2", usd()).unwrap();
        let sum = Money::from_minor(a.minor_units() + b.minor_units(), usd());
        assert_eq!(sum, Money::parse_amount("0.3", usd()).unwrap());
        assert_eq!(sum.to_string(), "0.30");
    }

    #[test]
    fn refuses_bad_amounts_with_reasons() {
        assert!(matches!(
            Money::parse_amount("-1", usd()),
            Err(MoneyError::NotPositive(_))
        ));
        assert!(matches!(
            Money::parse_amount("0.00", usd()),
            Err(MoneyError::NotPositive(_))
        ));
        assert!(matches!(
            Money::parse_amount("1.001", usd()),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Money::parse_amount("10000000000000.01", usd()),
            Err(MoneyError::TooLarge { .. })
        ));
        for text in ["", "abc", "1.2.3", "12,50", "NaN", "inf", "--1", "1e", "."] {
            assert!(
                matches!(
                    Money::parse_amount(text, usd()),
                    Err(MoneyError::NotANumber(_))
                ),
                "{text:?} should not parse"
            );
        }
        let message = Money::parse_amount("1.001", usd()).unwrap_err().to_string();
        assert_eq!(message, "1.001 has more decimal places than USD allows (2)");
    }

    #[test]
    fn typed_amounts_have_no_exponent() {
        for text in ["1e3", "1E-2", "1e-400", "-1e2", "0e0", ".5e1", "1.5E+1"] {
            assert_eq!(
                Money::parse_amount(text, usd()),
                Err(MoneyError::Exponent(text.into())),
                "{text}"
            );
        }
        let message = Decimal::parse_typed("1e3").unwrap_err().to_string();
        assert!(message.contains("scientific notation"), "{message}");
        for text in ["e3", "1e", "abc", "-e1"] {
            assert!(
                matches!(Decimal::parse_typed(text), Err(MoneyError::NotANumber(_))),
                "{text}"
            );
        }
        assert_eq!(
            Decimal::parse_typed(" 12.50 ").unwrap(),
            Decimal::new(1250, 2)
        );
        // A row of a file: a JSON number or string, without an exponent.
        #[derive(Deserialize)]
        struct Row {
            #[serde(deserialize_with = "deserialize_typed")]
            amount: Decimal,
        }
        let row: Row = serde_json::from_str(r#"{"amount":12.50}"#).unwrap();
        assert_eq!(row.amount.to_string(), "12.50");
        let err = serde_json::from_str::<Row>(r#"{"amount":1e3}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("scientific notation"), "{err}");
    }

    #[test]
    fn messages_on_topics_keep_their_exponents() {
        assert_eq!(dec("1e2"), Decimal::new(100, 0));
        assert_eq!(dec("1.5E-1"), Decimal::new(15, 2));
        let parsed: Decimal = serde_json::from_str("1e3").unwrap();
        assert_eq!(parsed.to_string(), "1000");
        assert!(matches!(
            "1e40".parse::<Decimal>(),
            Err(MoneyError::TooLong(_))
        ));
        assert!(matches!(
            "0e2000000000".parse::<Decimal>(),
            Err(MoneyError::TooLong(_))
        ));
        assert!(dec("0e-30").is_zero());
        // Tiny is not large.
        let tiny = "1e-400".parse::<Decimal>().unwrap_err();
        assert_eq!(tiny, MoneyError::TooManyPlaces("1e-400".into()));
        assert_eq!(
            tiny.to_string(),
            "1e-400 has too many decimal places: at most 36"
        );
        assert!(matches!(
            format!("0.{}1", "0".repeat(40)).parse::<Decimal>(),
            Err(MoneyError::TooManyPlaces(_))
        ));
    }

    #[test]
    fn the_largest_amount_is_accepted() {
        let max = Money::parse_amount("10000000000000", usd()).unwrap();
        assert_eq!(max.minor_units(), MAX_MINOR_UNITS);
    }

    #[test]
    fn every_current_iso_4217_currency_has_its_minor_unit() {
        for (code, exponent) in [
            ("USD", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("TND", 3),
            ("CLF", 4),
            ("ISK", 0),
            ("XOF", 0),
            ("mad", 2),
        ] {
            let currency = Currency::parse(code).unwrap();
            assert_eq!(currency.code(), code.to_ascii_uppercase());
            assert_eq!(currency.exponent(), exponent, "{code}");
        }
        let yen = Currency::parse("JPY").unwrap();
        assert!(Money::parse_amount("1500", yen).is_ok());
        assert!(Money::parse_amount("1.5", yen).is_err());
        let dinar = Currency::parse("KWD").unwrap();
        assert_eq!(
            Money::parse_amount("1.125", dinar).unwrap().minor_units(),
            1125
        );
    }

    #[test]
    fn what_is_not_a_currency_is_refused_with_near_codes() {
        let unknown = Currency::parse("USX").unwrap_err().to_string();
        assert_eq!(
            unknown,
            "unknown currency \"USX\": not an ISO 4217 code; did you mean USD or UGX?"
        );
        let swapped = Currency::parse("UDS").unwrap_err().to_string();
        assert!(swapped.contains("did you mean USD"), "{swapped}");
        let far = Currency::parse("QQQ").unwrap_err().to_string();
        assert_eq!(far, "unknown currency \"QQQ\": not an ISO 4217 code");
        let many = Currency::parse("EUX").unwrap_err().to_string();
        assert!(many.contains("EUR"), "{many}");
        let gold = Currency::parse("XAU").unwrap_err().to_string();
        assert!(gold.contains("no minor unit"), "{gold}");
        let kuna = Currency::parse("HRK").unwrap_err().to_string();
        assert!(kuna.contains("replaced by EUR"), "{kuna}");
        for unit in ["XXX", "XTS", "XDR"] {
            assert_eq!(
                Currency::parse(unit),
                Err(MoneyError::NoMinorUnit(unit.into())),
                "{unit}"
            );
        }
    }

    #[test]
    fn both_codes_of_the_bolivar_are_current() {
        // ISO 4217 amendment 170 added VED beside VES, which stays valid.
        for code in ["VES", "VED"] {
            assert_eq!(Currency::parse(code).unwrap().exponent(), 2, "{code}");
        }
        let near = Currency::parse("VEX").unwrap_err().to_string();
        assert!(near.contains("VES") && near.contains("VED"), "{near}");
    }

    #[test]
    fn decimal_round_trips_through_json_as_a_number() {
        let parsed: Decimal = serde_json::from_str("12.50").unwrap();
        assert_eq!(parsed, Decimal::new(1250, 2));
        assert_eq!(serde_json::to_string(&parsed).unwrap(), "12.50");
        let from_string: Decimal = serde_json::from_str("\"0.30\"").unwrap();
        assert_eq!(from_string.to_string(), "0.30");
        assert!(serde_json::from_str::<Decimal>("true").is_err());
    }

    #[test]
    fn displays_with_the_currency_places() {
        assert_eq!(Money::from_minor(5, usd()).to_string(), "0.05");
        assert_eq!(Money::from_minor(-1250, usd()).to_string(), "-12.50");
        assert_eq!(dec("0.000").to_string(), "0.000");
        assert_eq!(dec("-0.5").normalized(), Decimal::new(-5, 1));
    }
}

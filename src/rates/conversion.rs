//! Conversion arithmetic, exact: no float, one rounding at the end.
//!
//! A conversion multiplies the amount by the product of its legs' rates
//! (each leg a stored rate, or its inverse) as an exact fraction, then rounds
//! once to the target currency's minor unit, half to even (banker's
//! rounding): 0.125 → 0.12, 0.135 → 0.14, 0.1251 → 0.13.

use num_bigint::BigInt;
use num_integer::Integer;

use crate::money::{Currency, Decimal, Money};

/// One step of a conversion: a stored pair's rate, used as is or inverted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    pub base: Currency,
    pub quote: Currency,
    /// Units of `quote` per unit of `base`.
    pub rate: Decimal,
    /// True when converting quote → base (dividing by the rate).
    pub inverted: bool,
}

/// An exact non-negative fraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ratio {
    pub numerator: BigInt,
    pub denominator: BigInt,
}

impl Ratio {
    fn of(d: Decimal) -> Ratio {
        Ratio {
            numerator: BigInt::from(d.mantissa()),
            denominator: BigInt::from(10u8).pow(d.scale()),
        }
    }

    fn times(self, other: Ratio) -> Ratio {
        Ratio {
            numerator: self.numerator * other.numerator,
            denominator: self.denominator * other.denominator,
        }
    }

    fn inverse(self) -> Ratio {
        Ratio {
            numerator: self.denominator,
            denominator: self.numerator,
        }
    }

    /// The product of the legs' rates: units of the target per unit of the source.
    pub fn of_legs(legs: &[Leg]) -> Ratio {
        legs.iter().fold(Ratio::of(Decimal::new(1, 0)), |acc, leg| {
            let rate = Ratio::of(leg.rate);
            acc.times(if leg.inverted { rate.inverse() } else { rate })
        })
    }

    /// The value rounded half to even at `places` decimals; `Err` with the
    /// digits when it does not fit a decimal.
    pub fn to_decimal(&self, places: u32) -> Result<Decimal, String> {
        let scaled = &self.numerator * BigInt::from(10u8).pow(places);
        let minor = round_half_even(&scaled, &self.denominator);
        i128::try_from(&minor)
            .map(|m| Decimal::new(m, places))
            .map_err(|_| minor.to_string())
    }
}

/// `numerator / denominator` rounded to the nearest integer, ties to even.
fn round_half_even(numerator: &BigInt, denominator: &BigInt) -> BigInt {
    let (quotient, remainder) = numerator.div_mod_floor(denominator);
    let twice = remainder * 2u8;
    match twice.cmp(denominator) {
        std::cmp::Ordering::Less => quotient,
        std::cmp::Ordering::Greater => quotient + 1u8,
        std::cmp::Ordering::Equal if quotient.is_even() => quotient,
        std::cmp::Ordering::Equal => quotient + 1u8,
    }
}

/// Why a conversion result cannot be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    #[error("the result {0} is too large")]
    TooLarge(String),
}

/// Converts `amount` along `legs` into `to`, rounding once (half to even).
pub fn convert(amount: Money, to: Currency, legs: &[Leg]) -> Result<Money, ConversionError> {
    let value = Ratio::of(amount.to_decimal()).times(Ratio::of_legs(legs));
    let result = value
        .to_decimal(to.exponent())
        .map_err(ConversionError::TooLarge)?;
    i64::try_from(result.mantissa())
        .ok()
        .filter(|m| *m <= crate::money::MAX_MINOR_UNITS)
        .map(|minor| Money::from_minor(minor, to))
        .ok_or_else(|| ConversionError::TooLarge(result.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn leg(base: &str, quote: &str, rate: &str, inverted: bool) -> Leg {
        Leg {
            base: c(base),
            quote: c(quote),
            rate: rate.parse().unwrap(),
            inverted,
        }
    }

    fn usd(text: &str) -> Money {
        Money::parse_amount(text, c("USD")).unwrap()
    }

    #[test]
    fn direct_conversion_is_exact() {
        let eur = convert(
            usd("100.00"),
            c("EUR"),
            &[leg("USD", "EUR", "0.9215", false)],
        )
        .unwrap();
        assert_eq!(eur.to_string(), "92.15");
    }

    #[test]
    fn rounds_once_half_to_even() {
        let rate = |r| [leg("USD", "EUR", r, false)];
        assert_eq!(
            convert(usd("1.00"), c("EUR"), &rate("0.125"))
                .unwrap()
                .to_string(),
            "0.12"
        );
        assert_eq!(
            convert(usd("1.00"), c("EUR"), &rate("0.135"))
                .unwrap()
                .to_string(),
            "0.14"
        );
        assert_eq!(
            convert(usd("1.00"), c("EUR"), &rate("0.1251"))
                .unwrap()
                .to_string(),
            "0.13"
        );
    }

    #[test]
    fn inverse_divides_exactly() {
        // 10 EUR at USD/EUR = 0.8 is 12.50 USD.
        let result = convert(
            Money::parse_amount("10", c("EUR")).unwrap(),
            c("USD"),
            &[leg("USD", "EUR", "0.8", true)],
        )
        .unwrap();
        assert_eq!(result.to_string(), "12.50");
        // 1 EUR at USD/EUR = 3 is 0.333… USD: one rounding, at the end.
        let third = convert(
            Money::parse_amount("1", c("EUR")).unwrap(),
            c("USD"),
            &[leg("USD", "EUR", "3", true)],
        )
        .unwrap();
        assert_eq!(third.to_string(), "0.33");
    }

    #[test]
    fn cross_rates_round_only_at_the_end() {
        // EUR → USD → JPY: 10 EUR / 0.9 × 150.5 = 1672.22… → 1672 JPY.
        let legs = [
            leg("USD", "EUR", "0.9", true),
            leg("USD", "JPY", "150.5", false),
        ];
        let yen = convert(
            Money::parse_amount("10", c("EUR")).unwrap(),
            c("JPY"),
            &legs,
        )
        .unwrap();
        assert_eq!(yen.to_string(), "1672");
        // Rounding each leg would give 11.11 USD × 150.5 = 1672.06 → the same here,
        // but 0.01 EUR shows the difference: 0.0111… × 150.5 = 1.67 → 2 JPY, not 0.01 × 150.5 = 2.
        let tiny = convert(
            Money::parse_amount("0.01", c("EUR")).unwrap(),
            c("JPY"),
            &legs,
        )
        .unwrap();
        assert_eq!(tiny.to_string(), "2");
    }

    #[test]
    fn effective_rate_is_shown_rounded() {
        let ratio = Ratio::of_legs(&[leg("USD", "EUR", "3", true)]);
        assert_eq!(ratio.to_decimal(6).unwrap().to_string(), "0.333333");
    }
}

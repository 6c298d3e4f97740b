//! Fixed-point numbers: prices and volumes travel as `i64` with 8 decimal places, never as floats.

use std::fmt;
use std::str::FromStr;

/// Scale of every fixed-point field: `1.0` is `100_000_000`.
pub const FIXED_SCALE: i64 = 100_000_000;
const DECIMALS: usize = 8;

/// An `i64` with 8 implied decimal places. `Display` and `FromStr` are exact (no float rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fixed8(pub i64);

impl Fixed8 {
    /// The raw wire value.
    pub const fn raw(self) -> i64 {
        self.0
    }

    /// Nearest fixed-point value to `value`, for adapters fed by float APIs; `None` when out of range
    /// or not finite.
    pub fn from_f64(value: f64) -> Option<Fixed8> {
        let scaled = (value * FIXED_SCALE as f64).round();
        (scaled.is_finite() && scaled >= i64::MIN as f64 && scaled < i64::MAX as f64)
            .then_some(Fixed8(scaled as i64))
    }

    /// Approximate float value, for display and statistics only.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / FIXED_SCALE as f64
    }
}

impl fmt::Display for Fixed8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / FIXED_SCALE as u64;
        let frac = abs % FIXED_SCALE as u64;
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{frac:0DECIMALS$}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Why a decimal string is not a [`Fixed8`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a decimal number with at most 8 decimal places in i64 range")]
pub struct ParseFixedError {
    input: String,
}

impl FromStr for Fixed8 {
    type Err = ParseFixedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFixedError { input: s.to_owned() };
        let (negative, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = match body.split_once('.') {
            Some((_, "")) => return Err(err()),
            Some(parts) => parts,
            None => (body, ""),
        };
        let digits_ok = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits_ok(whole) || !digits_ok(frac) || frac.len() > DECIMALS {
            return Err(err());
        }
        let whole: i128 = whole.parse().map_err(|_| err())?;
        let frac_value: i128 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<DECIMALS$}").parse().map_err(|_| err())?
        };
        let magnitude = whole * i128::from(FIXED_SCALE) + frac_value;
        let value = if negative { -magnitude } else { magnitude };
        i64::try_from(value).map(Fixed8).map_err(|_| err())
    }
}

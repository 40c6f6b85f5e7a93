//! Data rates in the config are written the human way: `"1KiB/s"`, `"500B/s"`,
//! `"2MB/s"`; `"off"` (or any zero rate) turns the check off.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Bytes per second; 0 means no minimum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ByteRate(pub u64);

/// The text is not a rate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a data rate; write e.g. \"1KiB/s\", \"500B/s\", \"2MB/s\" or \"off\"")]
pub struct ByteRateError(String);

impl ByteRate {
    pub fn is_off(self) -> bool {
        self.0 == 0
    }
}

impl FromStr for ByteRate {
    type Err = ByteRateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ByteRateError(text.to_owned());
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("off") {
            return Ok(Self(0));
        }
        let amount = trimmed.strip_suffix("/s").ok_or_else(err)?.trim_end();
        let digits = amount
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(amount.len());
        let (number, unit) = amount.split_at(digits);
        let number: u64 = number.parse().map_err(|_| err())?;
        let scale: u64 = match unit.trim() {
            "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1024,
            "MB" => 1000 * 1000,
            "MiB" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1024 * 1024 * 1024,
            _ => return Err(err()),
        };
        number.checked_mul(scale).map(Self).ok_or_else(err)
    }
}

impl TryFrom<String> for ByteRate {
    type Error = ByteRateError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<ByteRate> for String {
    fn from(rate: ByteRate) -> Self {
        rate.to_string()
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            f.write_str("off")
        } else {
            write!(f, "{}B/s", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_round_trips() {
        for (text, bytes) in [
            ("1KiB/s", 1024),
            ("500B/s", 500),
            ("2MB/s", 2_000_000),
            ("3 MiB/s", 3 << 20),
            ("off", 0),
            ("0B/s", 0),
        ] {
            let rate: ByteRate = text.parse().unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(rate.0, bytes, "{text}");
            assert_eq!(rate.to_string().parse::<ByteRate>(), Ok(rate));
        }
        for bad in [
            "1KiB",
            "fast",
            "-1B/s",
            "1.5KiB/s",
            "1 XB/s",
            "99999999999999999999GiB/s",
        ] {
            assert!(bad.parse::<ByteRate>().is_err(), "{bad}");
        }
    }
}

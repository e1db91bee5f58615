//! Durations as the CRDs write them: `500ms`, `30s`, `5m`, `1h30m`, `1.5s`.
//!
//! The language is exactly the one the CRD's CEL rule accepts,
//! `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$`: one or more terms, each a decimal number and a unit,
//! added up. Like Go's `time.ParseDuration` (which the pattern follows), terms may come in any
//! order and any term may have a fraction (`1.5h30m` is 2 hours). No crate parses this exact
//! language (jiff's friendly format, for one, wants units in descending order and a fraction only
//! on the last), so it is parsed here, to nanosecond precision.

use std::time::Duration;

/// A duration that is not of the form `500ms`, `30s`, `5m`, `1h30m` or `1.5s`, or that is too
/// long to represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: must be like 500ms, 30s, 5m, 1h30m or 1.5s")]
pub struct DurationError(String);

impl DurationError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.0
    }
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h30m` or `1.5s` (see the module docs).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_owned());
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0;
    let mut i = 0;
    while i < b.len() {
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &s[int_start..i];
        if int_digits.is_empty() {
            return Err(err());
        }
        let mut frac_digits = "";
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &s[frac_start..i];
            if frac_digits.is_empty() {
                return Err(err());
            }
        }
        let unit_nanos: u128 = match (b.get(i), b.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                1_000_000
            }
            (Some(b's'), _) => {
                i += 1;
                NANOS_PER_SEC
            }
            (Some(b'm'), _) => {
                i += 1;
                60 * NANOS_PER_SEC
            }
            (Some(b'h'), _) => {
                i += 1;
                3600 * NANOS_PER_SEC
            }
            _ => return Err(err()),
        };
        // More digits than u128 holds means a duration far beyond u64 seconds anyway.
        let int: u128 = int_digits.parse().map_err(|_| err())?;
        // Digits past the 18th are worth less than a nanosecond of the largest unit (1h is
        // 3.6e12 ns), so they are dropped; 10^18 times 3.6e12 still fits in u128.
        let frac = &frac_digits[..frac_digits.len().min(18)];
        let frac_nanos = if frac.is_empty() {
            0
        } else {
            let value: u128 = frac.parse().map_err(|_| err())?;
            value * unit_nanos / 10u128.pow(frac.len() as u32)
        };
        total = int
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(err)?;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| err())?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), ms(500));
        assert_eq!(parse_duration("30s").unwrap(), ms(30_000));
        assert_eq!(parse_duration("5m").unwrap(), ms(300_000));
        assert_eq!(parse_duration("1h30m").unwrap(), ms(5_400_000));
        assert_eq!(parse_duration("1.5s").unwrap(), ms(1_500));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn terms_add_up_in_any_order_with_fractions_anywhere() {
        assert_eq!(parse_duration("1.5h30m").unwrap(), ms(7_200_000));
        assert_eq!(parse_duration("30m1h").unwrap(), ms(5_400_000));
        assert_eq!(parse_duration("1s1s").unwrap(), ms(2_000));
        assert_eq!(parse_duration("1m0.5s250ms").unwrap(), ms(60_750));
    }

    #[test]
    fn fractions_are_exact_to_the_nanosecond() {
        assert_eq!(
            parse_duration("0.1s").unwrap(),
            Duration::from_nanos(100_000_000)
        );
        assert_eq!(parse_duration("1.000000001s").unwrap(), Duration::new(1, 1));
        assert_eq!(parse_duration("0.0000001ms").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("2.25ms").unwrap(),
            Duration::from_micros(2_250)
        );
        // Very long fractions are cut, not rejected.
        let long = format!("0.{}h", "9".repeat(60));
        assert_eq!(
            parse_duration(&long).unwrap(),
            Duration::from_secs(3600) - Duration::from_nanos(1)
        );
    }

    #[test]
    fn rejects_what_the_crd_pattern_rejects() {
        for bad in [
            "", "5", "s", "ms", "1.s", ".5s", "1,5s", "5 s", " 5s", "5s ", "-5s", "+5s", "5sec",
            "5d", "5us", "5M", "1h30", "5mss", "1.2.3s", "PT5S", "5ms5",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.input(), bad);
        }
    }

    #[test]
    fn rejects_what_does_not_fit() {
        assert!(parse_duration("18446744073709551615s").is_ok());
        assert!(parse_duration("18446744073709551616s").is_err());
        assert!(parse_duration("5124095576030432h").is_err());
        assert!(parse_duration(&format!("{}h", "9".repeat(50))).is_err());
    }

    #[test]
    fn the_error_names_the_input() {
        let e = parse_duration("5 minutes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid duration \"5 minutes\": must be like 500ms, 30s, 5m, 1h30m or 1.5s"
        );
    }
}

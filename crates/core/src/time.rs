//! Wall-clock instants as seconds since the Unix epoch.
//!
//! Annotations, token claims, statuses and registry token responses all carry
//! such instants. [`UnixTime`] is the one type for them: RFC 3339 on display and
//! parse, and arithmetic that saturates instead of overflowing, so a hostile or
//! absurd lifetime (`expires_in: 9223372036854775807`, `tokenTtl: 99999999999h`)
//! becomes "far future", never a panic or a negative lifetime. The core reads no
//! clock: adapters turn `SystemTime::now()` into a `UnixTime` with
//! [`UnixTime::from_system`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since 1970-01-01T00:00:00Z (negative before it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// The instant a `SystemTime` stands for (the epoch for one before it that
    /// cannot be told apart; whole seconds).
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(secs(d)),
            Err(e) => Self(secs(e.duration()).saturating_neg()),
        }
    }

    /// This instant plus `d`, saturating at the far future.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(secs(d)))
    }

    /// This instant minus `d`, saturating at the far past.
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(secs(d)))
    }

    /// How long from `self` until `later` (zero once it has passed).
    pub fn until(self, later: UnixTime) -> Duration {
        Duration::from_secs(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }

    /// RFC 3339 in UTC with whole seconds (`2026-12-02T10:00:00Z`), as
    /// Kubernetes writes `metav1.Time`. Instants beyond chrono's range (years
    /// past ±262 000) print as the epoch rather than fail.
    pub fn rfc3339(self) -> String {
        chrono::DateTime::from_timestamp(self.0, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// Parses RFC 3339 with any offset; fractions of a second are dropped.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeError> {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Self(t.timestamp()))
            .map_err(|_| TimeError(s.to_string()))
    }
}

/// A time that is not RFC 3339; names the text it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time")]
pub struct TimeError(pub String);

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// A duration in whole seconds as `i64`, saturating: `as_secs() as i64`
/// wraps `u64::MAX` to `-1`, which turned a huge lifetime into "expired".
pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc3339_round_trips_and_parses_offsets() {
        let t = UnixTime(1_764_669_600);
        assert_eq!(t.to_string(), "2025-12-02T10:00:00Z");
        assert_eq!(UnixTime::parse_rfc3339(&t.rfc3339()), Ok(t));
        assert_eq!(
            UnixTime::parse_rfc3339("2025-12-02T11:00:00.75+01:00"),
            Ok(t)
        );
        assert!(UnixTime::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn huge_durations_saturate_instead_of_wrapping() {
        assert_eq!(secs(Duration::MAX), i64::MAX);
        assert_eq!(secs(Duration::from_secs(u64::MAX)), i64::MAX);
        assert_eq!(UnixTime(1).plus(Duration::MAX), UnixTime(i64::MAX));
        assert_eq!(UnixTime(-1).minus(Duration::MAX), UnixTime(i64::MIN));
        assert_eq!(UnixTime(10).until(UnixTime(4)), Duration::ZERO);
        assert_eq!(
            UnixTime(i64::MIN).until(UnixTime(i64::MAX)),
            Duration::from_secs(i64::MAX as u64)
        );
        assert_eq!(UnixTime(i64::MAX).rfc3339(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn system_times_before_the_epoch_are_negative() {
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(UnixTime::from_system(before), UnixTime(-5));
        assert_eq!(
            UnixTime::from_system(UNIX_EPOCH + Duration::from_secs(7)),
            UnixTime(7)
        );
    }

    proptest! {
        #[test]
        fn arithmetic_is_total_and_monotone(t in any::<i64>(), s in any::<u64>(), n in any::<u32>()) {
            let d = Duration::new(s, n % 1_000_000_000);
            let t = UnixTime(t);
            prop_assert!(t.plus(d) >= t);
            prop_assert!(t.minus(d) <= t);
            prop_assert!(secs(d) >= 0);
            let _ = t.plus(d).rfc3339();
            if let Some(end) = t.0.checked_add(secs(d)) {
                prop_assert_eq!(t.until(UnixTime(end)).as_secs(), secs(d) as u64);
            }
        }
    }
}

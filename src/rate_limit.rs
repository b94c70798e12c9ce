//! A channel's rate limit as operators write it (`10/s`, `600/m`): the
//! value type, its parser and its display. Stored on the channel row as a
//! count and a period in seconds (migration 0009), shown and accepted as the
//! text. Enforcing it is the leader's (`reconcile::rate`, the sliding window
//! of request starts, and `reconcile::scheduler`, which decides); checking
//! what an operator typed is `ops::channels`'s, which calls [`RateLimit::parse`].

use std::fmt;
use std::time::Duration;

/// The most requests a limit may allow per window. The leader keeps (and
/// persists) one time per request started in the window, so the bound
/// keeps that state small; a channel that takes more needs no limit.
pub const MAX_PER_WINDOW: u32 = 10_000;

/// At most `count` request starts in any window of `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Requests per window, 1..=[`MAX_PER_WINDOW`].
    pub count: u32,
    /// The window: 1 (per second) or 60 (per minute).
    pub per_secs: u32,
}

impl RateLimit {
    /// Parses `N/s` or `N/m` (N from 1 to [`MAX_PER_WINDOW`]); the error
    /// says what is accepted.
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let bad = |why: &str| {
            format!("{text:?}: {why}; write N/s or N/m with N from 1 to {MAX_PER_WINDOW}, e.g. \"10/s\" (or \"none\" to remove it)")
        };
        let (n, unit) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("not a rate"))?;
        let per_secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            _ => return Err(bad("the window must be s (second) or m (minute)")),
        };
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        if count == 0 || count > MAX_PER_WINDOW {
            return Err(bad("the count is out of range"));
        }
        Ok(RateLimit { count, per_secs })
    }

    /// From the stored columns; `None` when either is missing or out of
    /// range (the migration's checks keep them in range).
    pub fn from_columns(count: Option<i32>, per_secs: Option<i32>) -> Option<RateLimit> {
        let count = u32::try_from(count?).ok()?;
        let per_secs = u32::try_from(per_secs?).ok()?;
        ((1..=MAX_PER_WINDOW).contains(&count) && matches!(per_secs, 1 | 60))
            .then_some(RateLimit { count, per_secs })
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.per_secs))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.per_secs == 60 { "m" } else { "s" };
        write!(f, "{}/{unit}", self.count)
    }
}

impl serde::Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_and_per_minute_parse_and_show_the_same() {
        for text in ["10/s", "1/s", "600/m", "10000/s"] {
            assert_eq!(RateLimit::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            RateLimit::parse(" 5 / m ").unwrap(),
            RateLimit {
                count: 5,
                per_secs: 60
            }
        );
        assert_eq!(
            RateLimit::parse("10/s").unwrap().window(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn zero_words_other_windows_and_huge_counts_are_refused() {
        for text in [
            "0/s", "abc", "10/h", "10", "/s", "-1/s", "1.5/s", "10001/s", "10/", "none",
        ] {
            let e = RateLimit::parse(text).unwrap_err();
            assert!(e.contains("N/s or N/m"), "{text}: {e}");
        }
    }

    #[test]
    fn stored_columns_out_of_range_are_no_limit() {
        assert_eq!(
            RateLimit::from_columns(Some(3), Some(60)),
            Some(RateLimit {
                count: 3,
                per_secs: 60
            })
        );
        assert_eq!(RateLimit::from_columns(None, Some(1)), None);
        assert_eq!(RateLimit::from_columns(Some(0), Some(1)), None);
        assert_eq!(RateLimit::from_columns(Some(3), Some(7)), None);
    }
}

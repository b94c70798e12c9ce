//! Durations as `check-config` prints them (parsing is humantime's).

use super::*;

/// A duration as `check-config` prints it: one number in the largest of
/// `h`, `m`, `s`, `ms` that holds it exactly (`"48h"`, `"90m"`, `"1500ms"`,
/// `"0s"`), so a value reads as it is usually written and never in days;
/// anything finer than milliseconds in humantime's form. Parses back to
/// the same duration.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return humantime::format_duration(d).to_string();
    }
    let ms = d.as_millis();
    [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")]
        .iter()
        .find(|(unit, _)| ms % unit == 0)
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, name)| format!("{}{name}", ms / unit),
        )
}

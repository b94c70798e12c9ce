//! The web console's embedded files (placeholder until the console lands).

/// The embedded console file for `path` (after "/console"), as (content
/// type, bytes); `None` when there is no such file.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some((
            "text/html; charset=utf-8",
            b"<!doctype html><title>notification-reconciler</title><p>console</p>",
        )),
        _ => None,
    }
}

//! The web console: static HTML, CSS and JavaScript modules embedded in the
//! binary and served under `/console/` on the API listener. The pages call
//! the management API from the browser with the token the user signs in
//! with, so the console can do nothing the API cannot; there is no
//! server-side rendering and no build step (docs/architecture.md says why).
//!
//! This module only maps a request path to an embedded file and its content
//! type. Routing, authentication and the security headers every console
//! response carries (Content-Security-Policy, `nosniff`, `no-referrer`,
//! `no-store`) are the API router's business.

/// Content type of the HTML page.
const HTML: &str = "text/html; charset=utf-8";
/// Content type of the JavaScript modules (module scripts need a JavaScript
/// MIME type, which `nosniff` enforces).
const JS: &str = "text/javascript; charset=utf-8";
/// Content type of the style sheet.
const CSS: &str = "text/css; charset=utf-8";
/// Content type of the icon.
const SVG: &str = "image/svg+xml";

/// Every embedded file: path below `/console`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("/index.html", HTML, include_bytes!("index.html")),
    ("/style.css", CSS, include_bytes!("style.css")),
    ("/icon.svg", SVG, include_bytes!("icon.svg")),
    ("/app.js", JS, include_bytes!("app.js")),
    ("/api.js", JS, include_bytes!("api.js")),
    ("/dom.js", JS, include_bytes!("dom.js")),
    ("/signin.js", JS, include_bytes!("signin.js")),
    ("/overview.js", JS, include_bytes!("overview.js")),
    ("/channels.js", JS, include_bytes!("channels.js")),
    ("/channel.js", JS, include_bytes!("channel.js")),
    ("/events.js", JS, include_bytes!("events.js")),
    ("/event.js", JS, include_bytes!("event.js")),
    ("/recover.js", JS, include_bytes!("recover.js")),
    ("/links.js", JS, include_bytes!("links.js")),
    ("/subscriptions.js", JS, include_bytes!("subscriptions.js")),
    ("/subscription.js", JS, include_bytes!("subscription.js")),
    ("/eventtypes.js", JS, include_bytes!("eventtypes.js")),
    ("/eventtype.js", JS, include_bytes!("eventtype.js")),
];

/// The embedded console file for `path` (the request path after
/// "/console", e.g. "/" or "/app.js"), as (content type, bytes); None when
/// there is no such file. "/" and "/index.html" serve the page; a query
/// string or fragment on `path` is ignored. Anything else, including
/// "" (a request for "/console" without the slash, whose relative links
/// would resolve outside the console), is None.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|&(_, content_type, bytes)| (content_type, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_index_serve_the_page() {
        let (ct, root) = asset("/").expect("/ is the page");
        assert_eq!(ct, HTML);
        assert_eq!(asset("/index.html"), Some((HTML, root)));
        assert_eq!(asset("/?x=1"), Some((HTML, root)));
        let text = std::str::from_utf8(root).expect("utf-8 page");
        assert!(text.contains("<script type=\"module\" src=\"./app.js\">"));
    }

    #[test]
    fn modules_and_style_have_their_types() {
        assert_eq!(asset("/app.js").map(|a| a.0), Some(JS));
        assert_eq!(asset("/style.css").map(|a| a.0), Some(CSS));
        assert_eq!(asset("/icon.svg").map(|a| a.0), Some(SVG));
    }

    #[test]
    fn unknown_paths_and_traversal_are_none() {
        for path in [
            "",
            "/nope.js",
            "/../Cargo.toml",
            "/./app.js",
            "//app.js",
            "/mod.rs",
            "/APP.JS",
            "app.js",
        ] {
            assert_eq!(asset(path), None, "{path:?}");
        }
    }

    /// Every module another one imports is embedded (a forgotten entry in
    /// `ASSETS` would break the page only in a browser).
    #[test]
    fn every_imported_module_is_embedded() {
        for (name, ct, bytes) in ASSETS {
            if *ct != JS {
                continue;
            }
            let text = std::str::from_utf8(bytes).expect("utf-8 module");
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let spec = line
                    .rsplit_once("from \"./")
                    .map(|(_, s)| s.trim_end_matches("\";"))
                    .unwrap_or_else(|| panic!("{name}: unexpected import {line:?}"));
                assert!(
                    asset(&format!("/{spec}")).is_some(),
                    "{name} imports {spec}, which is not embedded"
                );
            }
        }
    }

    /// The Content-Security-Policy forbids inline script and style: the
    /// page has no script body, no `style` attribute and no event handler
    /// attribute, and no module builds HTML from strings.
    #[test]
    fn nothing_inline_and_no_html_from_strings() {
        for (name, _, bytes) in ASSETS {
            let text = std::str::from_utf8(bytes).expect("utf-8 asset");
            // The SVG namespace is a name, not a place anything is loaded from.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                " style=\"",
                " onclick=",
                " onload=",
                "http://",
                "https://",
            ] {
                assert!(!text.contains(banned), "{name} contains {banned:?}");
            }
        }
        let page = std::str::from_utf8(asset("/").expect("page").1).expect("utf-8");
        assert_eq!(page.matches("<script").count(), 1, "one module script");
        assert!(page.contains("src=\"./app.js\"></script>"));
    }
}

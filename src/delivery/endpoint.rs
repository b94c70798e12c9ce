//! What makes a channel's endpoint usable: a parseable http(s) URL and custom
//! headers that are valid HTTP and do not touch the headers the service sets
//! itself. The CLI checks an operator's input with these functions; the
//! worker checks stored rows with the same ones (a row written by other
//! means may still be bad) and fails that delivery with the reason.

/// Headers the service sets on every request, and the hop-by-hop headers
/// that describe one connection rather than the request (RFC 9110 7.6.1;
/// `expect` would make the request wait for `100 Continue`); custom headers
/// may not set them.
pub const RESERVED_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Checks a channel URL: absolute, `http` or `https`, with a host.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    if url.chars().any(char::is_control) {
        return Err(format!("URL {url:?} contains a control character"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("URL {url:?} does not parse: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("URL {url:?} is not http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL {url:?} has no host"));
    }
    Ok(parsed)
}

/// The address a checked URL names literally, in whatever notation it was
/// written (`url` normalises `2130706433`, `0x7f.1` and `[::ffff:7f00:1]`),
/// or `None` for a host name. What the CLI checks against the SSRF guard
/// at `channel create`; host names are checked when resolved.
pub fn literal_address(url: &url::Url) -> Option<std::net::IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(_) => None,
    }
}

/// Refuses a URL with credentials (`user:password@`): they would be sent
/// to the endpoint as Basic authentication, echoed in every attempt's
/// record and shown to read-only tokens. A custom `Authorization` header
/// does the same without that. The message never quotes the URL.
pub fn check_no_credentials(url: &url::Url) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "the URL carries credentials (user:password@): put them in a custom header instead, e.g. Authorization"
                .into(),
        );
    }
    Ok(())
}

/// Checks one custom header: a token name (RFC 9110), not reserved, and a
/// value without control characters.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_tchar) {
        return Err(format!(
            "header name {name:?} is not a valid HTTP header name"
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header {name:?} is set by the service and cannot be overridden"
        ));
    }
    if value
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}')
    {
        return Err(format!(
            "value of header {name:?} contains a control character"
        ));
    }
    Ok(())
}

/// Parses an operator's `--header 'Name: value'`.
pub fn parse_header_arg(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once(':')
        .ok_or_else(|| format!("--header {arg:?} is not of the form 'Name: value'"))?;
    let (name, value) = (name.trim(), value.trim());
    check_header(name, value)?;
    Ok((name.to_string(), value.to_string()))
}

/// Parses and checks stored custom headers (a JSON object of strings).
pub fn parse_headers(json: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("custom headers are not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "custom headers are not a JSON object".to_string())?;
    object
        .iter()
        .map(|(name, value)| {
            let value = value
                .as_str()
                .ok_or_else(|| format!("value of header {name:?} is not a string"))?;
            check_header(name, value)?;
            Ok((name.clone(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x?y=1").is_ok());
        assert!(check_url("ftp://example.com")
            .unwrap_err()
            .contains("not http"));
        assert!(check_url("not a url")
            .unwrap_err()
            .contains("does not parse"));
        assert!(check_url("http://").is_err());
    }

    #[test]
    fn literal_addresses_in_every_notation() {
        let lit = |u: &str| literal_address(&check_url(u).expect(u)).map(|ip| ip.to_string());
        assert_eq!(lit("http://2130706433/").as_deref(), Some("127.0.0.1"));
        assert_eq!(lit("http://0x7f.1/").as_deref(), Some("127.0.0.1"));
        assert_eq!(lit("http://0177.0.0.1/").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            lit("http://[::ffff:127.0.0.1]/").as_deref(),
            Some("::ffff:127.0.0.1")
        );
        assert_eq!(lit("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(
            lit("http://169.254.169.254/latest/meta-data/").as_deref(),
            Some("169.254.169.254")
        );
        assert_eq!(lit("https://example.com/hook"), None);
        assert_eq!(lit("http://localhost:8080/"), None);
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header_arg("X-Tenant: acme").unwrap(),
            ("X-Tenant".to_string(), "acme".to_string())
        );
        assert!(parse_header_arg("no colon")
            .unwrap_err()
            .contains("Name: value"));
        assert!(parse_header_arg("Webhook-Signature: x")
            .unwrap_err()
            .contains("cannot be overridden"));
        assert!(parse_header_arg("Bad Name: x")
            .unwrap_err()
            .contains("not a valid"));
        assert!(check_header("X-A", "a\r\nInjected: 1")
            .unwrap_err()
            .contains("control"));
        assert_eq!(parse_headers("{}").unwrap(), vec![]);
        assert!(parse_headers("[]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_headers(r#"{"X-N": 1}"#)
            .unwrap_err()
            .contains("not a string"));
        assert!(parse_headers(r#"{"content-type": "text/plain"}"#).is_err());
        for hop in [
            "Connection",
            "TE",
            "Upgrade",
            "Expect",
            "Keep-Alive",
            "Trailer",
        ] {
            assert!(
                check_header(hop, "x")
                    .unwrap_err()
                    .contains("cannot be overridden"),
                "{hop}"
            );
        }
    }
}

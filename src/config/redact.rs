//! Passwords out of connection URLs and key/value strings, for every
//! message and for `check-config`.

/// Replaces the password of a connection URL by `***` (for printing): the
/// one after the user name and a `password=` query parameter alike.
pub fn redact_url(url: &str) -> String {
    // `app:secret@host/db` parses as a URL of scheme `app:` with the
    // password in its path: only `scheme://` is taken as a URL here.
    let parsed = url::Url::parse(url).ok().filter(|u| {
        url.get(u.scheme().len()..)
            .is_some_and(|rest| rest.starts_with("://"))
    });
    match parsed {
        Some(mut u) => {
            let in_query = u.query_pairs().any(|(k, _)| k == "password");
            if u.password().is_none() && !in_query {
                return url.to_string();
            }
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if in_query {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Unparseable (or no `scheme://`): hide everything between the
        // scheme (if any) and the last '@', and every `password=` value of
        // a key=value string.
        None => {
            let start = url.find("://").map_or(0, |s| s + 3);
            let hidden = match url.rfind('@') {
                Some(a) if a >= start => format!("{}***{}", &url[..start], &url[a..]),
                _ => url.to_string(),
            };
            redact_password_pairs(&hidden)
        }
    }
}

/// `text` with the value of every `password=` (a key=value connection
/// string's, quoted or not) replaced by `***`.
pub(super) fn redact_password_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find("password") {
        // libpq allows spaces around the '=' of a key=value string.
        let after_key = &rest[at + "password".len()..];
        let trimmed = after_key.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            out.push_str(&rest[..at + "password".len()]);
            rest = after_key;
            continue;
        };
        let value = value.trim_start();
        let value_start = rest.len() - value.len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let len = match value.strip_prefix('\'') {
            // A quoted value ends at the next quote not escaped by '\\'.
            Some(quoted) => {
                let mut escaped = false;
                let end = quoted
                    .char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '\'' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .map_or(quoted.len(), |(i, _)| i + 1);
                1 + end
            }
            None => value
                .find(|c: char| c.is_whitespace() || c == '&')
                .unwrap_or(value.len()),
        };
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

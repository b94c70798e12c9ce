//! Reading a request: JSON bodies (content type, UTF-8, syntax, unknown
//! fields and types, each refused with a status and the field named), path
//! ids and query parameters.

use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::http_server::Request;

/// Whether the request says its body is JSON (`application/json`, any
/// parameters, or `+json` types).
fn is_json(request: &Request) -> bool {
    request.header("content-type").is_some_and(|ct| {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
    })
}

/// The body as `T`. An empty body is `{}` when `empty_ok` (routes whose
/// every field is optional). Refused: another content type (415), bytes
/// that are not UTF-8 or not JSON, or an unknown field (400), a value of
/// the wrong type or a missing field (422).
pub fn json<T: DeserializeOwned>(request: &Request, empty_ok: bool) -> Result<T, ApiError> {
    let body: &[u8] = if request.body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        b"{}"
    } else {
        if !is_json(request) {
            return Err(ApiError::new(
                415,
                "the body must be JSON: send Content-Type: application/json",
            ));
        }
        &request.body
    };
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::new(400, format!("the body is not UTF-8 text: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::new(400, format!("the body is not valid JSON: {message}"))
            }
            Category::Data if message.starts_with("unknown field") => {
                let field = message
                    .split('`')
                    .nth(1)
                    .map(String::from)
                    .unwrap_or_else(|| path.clone());
                let at = if path == "." || path.is_empty() {
                    field.clone()
                } else {
                    path.clone()
                };
                ApiError::new(400, format!("unknown field {at:?}: {message}")).with_param(at)
            }
            Category::Data => {
                let at = if path == "." { String::new() } else { path };
                let text = if at.is_empty() {
                    message
                } else {
                    format!("{at}: {message}")
                };
                let e = ApiError::new(422, text);
                if at.is_empty() {
                    e
                } else {
                    e.with_param(at)
                }
            }
        }
    })?;
    de.end()
        .map_err(|e| ApiError::new(400, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// A path id: a UUID, or 404 (an id that cannot exist does not exist).
pub fn id(text: &str, what: &str) -> Result<Uuid, ApiError> {
    text.parse::<Uuid>()
        .map_err(|_| ApiError::not_found(format!("no {what} {text:?}")))
}

/// The query parameters, percent-decoded; a parameter not in `known`, or
/// one given twice, is refused (400).
pub fn query(
    raw: Option<&str>,
    known: &[&str],
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !known.contains(&k.as_ref()) {
            let list = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            return Err(ApiError::new(
                400,
                format!("unknown query parameter {k:?}; this route takes: {list}"),
            )
            .with_param(k.into_owned()));
        }
        if v.chars().any(char::is_control) {
            return Err(ApiError::new(
                422,
                format!("query parameter {k:?} contains a control character"),
            )
            .with_param(k.into_owned()));
        }
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(
                ApiError::new(400, format!("query parameter {k:?} is given twice"))
                    .with_param(k.into_owned()),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        n: Option<u32>,
    }

    fn request(ct: &str, body: &[u8]) -> Request {
        Request {
            method: "POST".into(),
            path: "/".into(),
            headers: vec![("content-type".into(), ct.into())],
            body: body.to_vec(),
        }
    }

    fn status(ct: &str, body: &[u8]) -> u16 {
        json::<Body>(&request(ct, body), false).map_or_else(|e| e.status, |_| 200)
    }

    #[test]
    fn bad_bodies_get_the_right_status() {
        assert_eq!(status("application/json", br#"{"name":"a"}"#), 200);
        assert_eq!(
            status("application/json; charset=utf-8", br#"{"name":"a"}"#),
            200
        );
        assert_eq!(status("text/plain", br#"{"name":"a"}"#), 415);
        assert_eq!(status("application/json", b"{\"name\":\"\xff\"}"), 400);
        assert_eq!(status("application/json", b"{\"name\":"), 400);
        assert_eq!(status("application/json", br#"{"name":"a"} x"#), 400);
        assert_eq!(status("application/json", br#"{"name":"a","x":1}"#), 400);
        assert_eq!(status("application/json", br#"{"name":5}"#), 422);
        assert_eq!(status("application/json", br#"{"n":1}"#), 422);
        assert_eq!(status("application/json", br#"[]"#), 422);
        let e = json::<Body>(
            &request("application/json", br#"{"name":"a","bogus":1}"#),
            false,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("bogus"), "{e:?}");
    }

    #[test]
    fn unknown_and_repeated_query_parameters_are_refused() {
        assert!(query(Some("limit=5&cursor=x"), &["limit", "cursor"]).is_ok());
        assert_eq!(query(Some("bogus=1"), &["limit"]).unwrap_err().status, 400);
        assert_eq!(
            query(Some("limit=1&limit=2"), &["limit"])
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(query(Some("type=a%20b"), &["type"]).unwrap()["type"], "a b");
    }

    #[test]
    fn an_id_that_is_no_uuid_is_not_found() {
        assert_eq!(id("../../etc/passwd", "channel").unwrap_err().status, 404);
    }
}

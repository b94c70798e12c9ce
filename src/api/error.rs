//! The API's one error shape, `{"error": {"code", "message"}}` (plus
//! `param` when one field is at fault), and how each failure of the layers
//! below maps onto a status: the caller's mistakes to 4xx, the service's
//! own failures (the database down) to 500/503, never a 5xx for bad input.

use crate::http_server::Response;
use crate::ops::OpsError;

/// A failed API request.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code.
    pub code: &'static str,
    /// One human sentence.
    pub message: String,
    /// The field at fault, if one is.
    pub param: Option<String>,
    /// Headers the answer carries (`Allow` of a 405, `Retry-After` of a
    /// 429).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// An error with `status`, its code, and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code_of(status),
            message: message.into(),
            param: None,
            headers: Vec::new(),
        }
    }

    /// The same error with a header on its answer.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    /// The same error naming the field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// 404 with the usual sentence for `what` (also used for objects of
    /// another namespace: they do not exist for this caller).
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(404, what)
    }

    /// The error as a response.
    pub fn response(&self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(param) = &self.param {
            error["param"] = serde_json::Value::String(param.clone());
        }
        let body = serde_json::json!({ "error": error });
        let mut response = Response::text(
            self.status,
            "application/json",
            serde_json::to_vec(&body).unwrap_or_default(),
        );
        for (name, value) in &self.headers {
            response.headers.push(((*name).to_string(), value.clone()));
        }
        if self.status == 401 && !self.headers.iter().any(|(n, _)| *n == "www-authenticate") {
            response
                .headers
                .push(("www-authenticate".into(), "Bearer".into()));
        }
        response
    }
}

/// The machine code of each status the API answers.
pub fn code_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        429 => "rate_limited",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        503 => "unavailable",
        _ => "internal",
    }
}

impl From<OpsError> for ApiError {
    fn from(err: OpsError) -> ApiError {
        match err {
            OpsError::Invalid { field, message } if field.is_empty() => ApiError::new(422, message),
            OpsError::Invalid { field, message } => {
                ApiError::new(422, format!("{field}: {message}")).with_param(field)
            }
            OpsError::NotFound(m) => ApiError::new(404, m),
            OpsError::Conflict(m) => ApiError::new(409, m),
            OpsError::TooLarge(m) => ApiError::new(413, m).with_param("payload"),
            OpsError::Db(e) => {
                let mut line = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    line.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                log::error!("api: {line}");
                if e.is_connection_lost() {
                    ApiError::new(503, "the database is unreachable; try again shortly")
                } else {
                    ApiError::new(500, "internal error (logged by the service)")
                }
            }
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> ApiError {
        ApiError::from(OpsError::from(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_errors_are_4xx_and_name_the_field() {
        let e = ApiError::from(OpsError::invalid("url", "bad"));
        assert_eq!(
            (e.status, e.code, e.param.as_deref()),
            (422, "invalid", Some("url"))
        );
        let body: serde_json::Value = serde_json::from_slice(&e.response().body).unwrap();
        assert_eq!(body["error"]["code"], "invalid");
        assert_eq!(body["error"]["message"], "url: bad");
        assert_eq!(ApiError::from(OpsError::Conflict("x".into())).status, 409);
        assert_eq!(ApiError::from(OpsError::NotFound("x".into())).status, 404);
        assert_eq!(ApiError::from(OpsError::TooLarge("x".into())).status, 413);
    }
}

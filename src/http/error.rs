//! Errors at the HTTP boundary. Each maps to one status and a JSON body `{"error": "..."}`;
//! the handlers return them with `?` and the router turns them into responses.

use hyper::header::{ACCEPT_ENCODING, ALLOW, CONNECTION, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::{self, Body};

/// A request the service refuses or cannot serve.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: malformed JSON or an unreadable body; the text says where.
    BadRequest(String),
    /// 400: a body whose framing is ambiguous (see `framing`); the connection closes.
    Framing(String),
    NotFound,
    /// 405, with the methods the path allows.
    MethodNotAllowed(&'static str),
    /// 408: the body did not arrive within the body timeout.
    Timeout,
    /// 413, with the limit in bytes.
    TooLarge(usize),
    /// 415: not `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 415: a content coding the service does not decode, named in the text.
    UnsupportedEncoding(String),
    /// 422: JSON of the wrong shape; the text names the field.
    Unprocessable(String),
    /// 431, with the limit that was exceeded.
    HeadersTooLarge(String),
    /// 501: a transfer coding the service does not decode, named in the text; the connection
    /// closes.
    NotImplemented(String),
    /// 503: the work could not be done (the log could not be written), with a short reason
    /// that names no path and quotes no OS error.
    Unavailable(&'static str),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Framing(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Framing(m)
            | ApiError::Unprocessable(m)
            | ApiError::UnsupportedEncoding(m)
            | ApiError::NotImplemented(m) => m.clone(),
            ApiError::Unavailable(m) => (*m).into(),
            ApiError::NotFound => "no such route".into(),
            ApiError::MethodNotAllowed(allow) => format!("method not allowed; use {allow}"),
            ApiError::Timeout => "the request body did not arrive in time".into(),
            ApiError::TooLarge(limit) => format!("request body larger than {limit} bytes"),
            ApiError::UnsupportedMediaType => "Content-Type must be application/json".into(),
            ApiError::HeadersTooLarge(m) => m.clone(),
        }
    }

    /// The JSON answer. Errors raised before the body was read close the connection, since
    /// the unread body would otherwise be parsed as the next request.
    pub(super) fn into_response(self) -> Response<Body> {
        let mut resp = body::json(self.status(), &json!({ "error": self.message() }));
        match self {
            ApiError::MethodNotAllowed(allow) => {
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Timeout
            | ApiError::TooLarge(_)
            | ApiError::HeadersTooLarge(_)
            | ApiError::Framing(_)
            | ApiError::NotImplemented(_) => {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            // What is accepted instead: no coding (RFC 9110 section 12.5.3).
            ApiError::UnsupportedEncoding(_) => {
                resp.headers_mut()
                    .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            }
            _ => {}
        }
        resp
    }
}

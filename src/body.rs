//! Response bodies and the bounded request-body reader. Every answer of this service is a
//! small JSON document known in full before the head is written, so one body type serves all.

use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};

use crate::error::ApiError;

/// The body type of every response.
pub type Body = Full<Bytes>;

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON response from bytes that are already JSON.
pub fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    resp
}

/// A JSON response serialised from `value`.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a Value always serialises");
    json_bytes(status, bytes)
}

/// Whether `headers` declare a JSON body (`application/json`, parameters allowed).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Reads the whole body, refusing more than `limit` bytes (checked against `Content-Length`
/// first, then while streaming, so a chunked body cannot slip past) and taking no longer than
/// `timeout`.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        // hyper has already rejected a malformed Content-Length; this is only the size check.
        let declared = len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if declared > limit as u64 {
            return Err(ApiError::TooLarge(limit));
        }
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match collected {
        Err(_elapsed) => Err(ApiError::Timeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge(limit))
        }
        // The client went away or broke the framing mid-body.
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
    }
}

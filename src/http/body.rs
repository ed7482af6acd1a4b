//! Bodies, both ways. Answers: every answer of this service is a small JSON document known
//! in full before the head is written, so one body type serves all (its `Content-Type` is
//! one of the headers the envelope gives every answer). Requests: the one route with a body
//! reads it whole, bounded in size and time.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Response, StatusCode};

use super::error::ApiError;

/// The body type of every response.
pub(crate) type Body = Full<Bytes>;

/// A JSON response from bytes that are already JSON.
pub(super) fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes.into()));
    *resp.status_mut() = status;
    resp
}

/// A JSON response serialised from `value`.
pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a Value always serialises");
    json_bytes(status, bytes)
}

/// Whether `headers` declare a JSON body (`application/json`, parameters allowed).
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v.split_once(';').map_or(v, |(e, _)| e).trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Reads the whole body, refusing more than `limit` bytes (checked against `Content-Length`
/// first, then while streaming, so a chunked body cannot slip past) and taking no longer than
/// `timeout`.
pub(super) async fn read_limited(
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
    // A small body usually arrives with its head and is in hyper's buffer already: one poll
    // without a timer takes it, and arming the timer costs more than the rest of the read.
    let mut collect = pin!(Limited::new(body, limit).collect());
    let collected = match poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => tokio::time::timeout(timeout, collect).await,
    };
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

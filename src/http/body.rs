//! Response bodies. Every answer of this service is a small JSON document known in full
//! before the head is written, so one body type serves all; its `Content-Type` is one of the
//! headers the envelope gives every answer.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

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

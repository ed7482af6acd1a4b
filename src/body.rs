//! Response bodies and the headers every answer carries. Every answer of this service is a
//! small JSON document known in full before the head is written, so one body type serves all.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};

/// The body type of every response.
pub type Body = Full<Bytes>;

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Every answer describes the service's state at one instant (health, counters, an event just
/// taken): no cache may keep one, or serve it again by heuristic freshness.
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// Browsers must take the JSON as JSON, never sniff it into something they would run.
static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// A JSON response from bytes that are already JSON. Every response is built here, so every
/// one carries `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`.
pub fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    // `append`: the map is new, so there is nothing to replace and no need to look.
    headers.append(CONTENT_TYPE, APPLICATION_JSON.clone());
    headers.append(CACHE_CONTROL, NO_STORE.clone());
    headers.append(X_CONTENT_TYPE_OPTIONS, NOSNIFF.clone());
    resp
}

/// A JSON response serialised from `value`.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).expect("a Value always serialises");
    json_bytes(status, bytes)
}

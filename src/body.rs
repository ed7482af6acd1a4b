//! Response bodies and the headers every answer carries. Every answer of this service is a
//! small JSON document known in full before the head is written, so one body type serves all.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};

/// The body type of every response.
pub type Body = Full<Bytes>;

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Every answer describes the service at one instant (health, counters, an event just taken):
/// no cache may keep one, or serve it again by heuristic freshness.
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// A browser must take the JSON as JSON, never sniff it into something it would run.
static NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// A JSON response from bytes that are already JSON. Every response is built here, so every
/// one carries `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`.
pub fn json_bytes(status: StatusCode, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    // `append`: the map is new, so there is nothing to replace. (Cloning a prepared map
    // measured dearer: its exact-size copy must grow for X-Request-Id.)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A response starts with exactly its content type and the two headers every answer
    /// carries.
    #[test]
    fn every_response_has_the_base_headers() {
        let resp = json_bytes(StatusCode::IM_A_TEAPOT, &b"{}"[..]);
        let h = resp.headers();
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h.len(), 3);
    }
}

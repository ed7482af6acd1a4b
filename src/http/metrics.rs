//! `GET /metrics` on the metrics listener (never on the API's port): the Prometheus text
//! format, or OpenMetrics when the scraper prefers it (`Accept`), as Prometheus does.

use hyper::body::Incoming;
use hyper::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::body::{self, Body};
use super::error::ApiError;
use super::exposition::{CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, render};
use crate::app::App;

/// Answers a request to the metrics listener.
pub(crate) fn metrics(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let open_metrics = prefers_open_metrics(req.headers().get(ACCEPT));
            let mut resp = body::json_bytes(StatusCode::OK, render(app, open_metrics));
            let kind = if open_metrics {
                CONTENT_TYPE_OPENMETRICS
            } else {
                CONTENT_TYPE_TEXT
            };
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
            resp
        }
        (_, "/metrics") => with_json_type(ApiError::MethodNotAllowed("GET, HEAD").into_response()),
        _ => with_json_type(ApiError::NotFound.into_response()),
    };
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn with_json_type(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Whether `Accept` ranks OpenMetrics at least as high as the text format (by `q`, default
/// 1), as Prometheus' own header does.
fn prefers_open_metrics(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut open, mut text) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let kind = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if kind.eq_ignore_ascii_case("application/openmetrics-text") {
            open = open.max(q);
        } else if kind.eq_ignore_ascii_case("text/plain") {
            text = text.max(q);
        }
    }
    open > 0.0 && open >= text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus' own `Accept` gets OpenMetrics; a plain or missing one the text format.
    #[test]
    fn accept_decides_the_format() {
        let pick = |v: &str| prefers_open_metrics(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(pick(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!pick("text/plain;version=0.0.4"));
        assert!(!pick("*/*"));
        assert!(!pick("application/openmetrics-text;q=0.2,text/plain"));
        assert!(!prefers_open_metrics(None));
    }
}

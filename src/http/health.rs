//! `GET /health`, readiness: whether this replica should get traffic now. It fails while the
//! log cannot be written and while draining. Liveness (whether to restart the process) is
//! `GET /`, which answers whenever the server does: a restart fixes neither case.

use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::body::{self, Body};
use crate::app::App;

/// `GET /health`: 503 `{"status":"draining"}` once shutdown is requested; otherwise 200
/// `{"status":"ok"}` while the log can be written, else 503 with the reason.
pub(super) fn get(app: &App) -> Response<Body> {
    if app.phases.draining() {
        return body::json_bytes(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(br#"{"status":"draining"}"#),
        );
    }
    match app.sink.failure() {
        None => body::json_bytes(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)),
        Some(reason) => body::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "unavailable", "reason": reason }),
        ),
    }
}

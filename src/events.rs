//! `POST /events`, the service's job: read a bounded JSON body, check its shape, append the
//! event record to the log, and answer `201` only once the record is in the file.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Response, StatusCode};
use log::Level;
use serde_json::Value;
use time::OffsetDateTime;

use crate::app::App;
use crate::body::{self, Body};
use crate::error::ApiError;
use crate::json::{self, Line};

/// `POST /events`: validates the event, appends its record, and answers 201 only once the
/// record is in the file.
pub async fn create(
    app: &App,
    head: &Parts,
    incoming: Incoming,
    request_id: &HeaderValue,
    client: IpAddr,
) -> Result<Response<Body>, ApiError> {
    if !is_json(&head.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = read_limited(
        &head.headers,
        incoming,
        app.cfg.max_body_bytes,
        app.cfg.body_timeout,
    )
    .await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let (kind, data) = event_shape(value)?;

    let id = app.ids.next();
    let now = OffsetDateTime::now_utc();
    let mut record = Vec::with_capacity(256 + bytes.len());
    let mut line = Line::start_at(&mut record, now, Level::Info, "event");
    line.str("host", app.sink.host())
        .str("id", id.as_str())
        .str("type", &kind)
        .bytes("request_id", request_id.as_bytes())
        .ip("client", client);
    if let Some(data) = &data {
        line.json("data", data);
    }
    line.finish();

    app.sink
        .append_durable(&record)
        .await
        .map_err(ApiError::Unavailable)?;
    app.events.fetch_add(1, Ordering::Relaxed);
    // Written directly: the id and timestamp are ASCII and the type was checked to be
    // `[A-Za-z0-9._:-]`, so nothing needs escaping, and a json! map costs five allocations.
    let mut answer = Vec::with_capacity(96);
    answer.extend_from_slice(b"{\"id\":\"");
    answer.extend_from_slice(id.as_bytes());
    answer.extend_from_slice(b"\",\"type\":\"");
    answer.extend_from_slice(kind.as_bytes());
    answer.extend_from_slice(b"\",\"received_at\":\"");
    json::write_timestamp(&mut answer, now);
    answer.extend_from_slice(b"\"}");
    Ok(body::json_bytes(StatusCode::CREATED, answer))
}

/// Checks `{"type": "<1-64 of A-Z a-z 0-9 . _ : ->", "data": <any, optional>}`.
fn event_shape(value: Value) -> Result<(String, Option<Value>), ApiError> {
    let Value::Object(mut map) = value else {
        return Err(ApiError::Unprocessable(
            "the body must be a JSON object with a \"type\" field".into(),
        ));
    };
    if let Some(extra) = map.keys().find(|k| *k != "type" && *k != "data") {
        return Err(ApiError::Unprocessable(format!(
            "unknown field \"{}\"; allowed fields are \"type\" and \"data\"",
            extra.escape_debug()
        )));
    }
    let kind = match map.remove("type") {
        None => return Err(ApiError::Unprocessable("field \"type\" is required".into())),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ApiError::Unprocessable(
                "field \"type\" must be a string".into(),
            ));
        }
    };
    let valid = (1..=64).contains(&kind.len())
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if !valid {
        return Err(ApiError::Unprocessable(
            "field \"type\" must be 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    Ok((kind, map.remove("data")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_shape_names_the_field() {
        let err = |v: Value| match event_shape(v) {
            Err(ApiError::Unprocessable(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(json!([])).contains("JSON object"));
        assert!(err(json!({})).contains("\"type\" is required"));
        assert!(err(json!({"type": 1})).contains("must be a string"));
        assert!(err(json!({"type": "a b"})).contains("1-64 characters"));
        assert!(err(json!({"type": "x".repeat(65)})).contains("1-64 characters"));
        assert!(err(json!({"type": "a", "extra": 1})).contains("\"extra\""));
        let (t, d) = event_shape(json!({"type": "user.signup:v2-a_b", "data": {"k": 1}})).unwrap();
        assert_eq!(
            (t.as_str(), d),
            ("user.signup:v2-a_b", Some(json!({"k": 1})))
        );
    }
}

//! `POST /events`, the service's job: read a bounded JSON body, check its shape, append the
//! event record to the log, and answer `201` only once the record is in the file. The body is
//! checked by [`rawjson`], and `data` is stored as the client's own text, minified: never
//! parsed into a tree and re-encoded, which would change numbers and escapes.

use std::borrow::Cow;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use time::OffsetDateTime;

use super::body::{self, Body};
use super::envelope::Envelope;
use super::error::ApiError;
use super::framing::BodyFields;
use crate::app::App;
use crate::logging::{EventRecord, json};
use crate::rawjson::{self, Doc};

/// `POST /events`: validates the event, appends its record, and answers 201 only once the
/// record is in the file.
pub(super) async fn post(
    app: &App,
    head: &Parts,
    incoming: Incoming,
    env: &Envelope<'_>,
) -> Result<Response<Body>, ApiError> {
    let fields = BodyFields::of(&head.headers);
    fields.check_framing(&head.headers)?;
    fields.check_json(&head.headers)?;
    let bytes = read_limited(incoming, app.cfg.max_body_bytes, app.cfg.body_timeout).await?;
    let doc = rawjson::scan(&bytes).map_err(|e| match e {
        rawjson::Error::Syntax { .. } => ApiError::BadRequest(format!("malformed JSON: {e}")),
        rawjson::Error::DuplicateKey(_) => {
            ApiError::Unprocessable(format!("{e}: a key may appear only once in an object"))
        }
        rawjson::Error::LongNumber { .. } => ApiError::Unprocessable(e.to_string()),
    })?;
    let Event { kind, data } = event_shape(&doc)?;

    let taken = Instant::now();
    let id = app.ids.next(taken);
    let received_at = json::timestamp(OffsetDateTime::now_utc());
    let record = EventRecord {
        received_at: &received_at,
        id: id.as_bytes(),
        kind: &kind,
        request_id: env.rid,
        client: env.client,
        data,
    };
    app.sink
        .append_event(&record)
        .await
        .map_err(|e| ApiError::Unavailable(e.0))?;
    app.events.fetch_add(1, Ordering::Relaxed);
    if let Some(m) = &app.metrics {
        m.event_written(taken.elapsed());
    }
    // The id and type need no escaping (see `EventRecord`), so the answer is copied together.
    let answer = [
        &b"{\"id\":\""[..],
        id.as_bytes(),
        b"\",\"type\":\"",
        &kind,
        b"\",\"received_at\":\"",
        &received_at,
        b"\"}",
    ]
    .concat();
    Ok(body::json_bytes(StatusCode::CREATED, answer))
}

/// An event as checked: its type, and the text of its data.
#[derive(Debug, PartialEq, Eq)]
struct Event<'d> {
    /// Decoded; ASCII, as the pattern allows nothing else, and kept as bytes since it is only
    /// ever copied.
    kind: Cow<'d, [u8]>,
    /// Minified JSON text, as sent.
    data: Option<&'d [u8]>,
}

/// Checks `{"type": "<1-64 of A-Z a-z 0-9 . _ : ->", "data": <any, optional>}`.
fn event_shape<'d>(doc: &'d Doc<'_>) -> Result<Event<'d>, ApiError> {
    if doc.text.first() != Some(&b'{') {
        return Err(ApiError::Unprocessable(
            "the body must be a JSON object with a \"type\" field".into(),
        ));
    }
    if let Some(extra) = doc
        .members
        .iter()
        .find(|m| !m.key_is("type") && !m.key_is("data"))
    {
        return Err(ApiError::Unprocessable(format!(
            "unknown field \"{}\"; allowed fields are \"type\" and \"data\"",
            extra.key().escape_debug()
        )));
    }
    let member = |name: &str| doc.members.iter().find(|m| m.key_is(name));
    let Some(kind) = member("type") else {
        return Err(ApiError::Unprocessable("field \"type\" is required".into()));
    };
    let raw = &doc.text[kind.value.clone()];
    let Some(inner) = raw.strip_prefix(b"\"").and_then(|r| r.strip_suffix(b"\"")) else {
        return Err(ApiError::Unprocessable(
            "field \"type\" must be a string".into(),
        ));
    };
    // A type may be written with escapes (`user\u002esignup`); it is checked, and stored,
    // decoded.
    let kind = if inner.contains(&b'\\') {
        Cow::Owned(rawjson::decode(inner).into_bytes())
    } else {
        Cow::Borrowed(inner)
    };
    let valid = (1..=64).contains(&kind.len())
        && kind
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(b));
    if !valid {
        return Err(ApiError::Unprocessable(
            "field \"type\" must be 1-64 characters of A-Z a-z 0-9 . _ : -".into(),
        ));
    }
    Ok(Event {
        kind,
        data: member("data").map(|m| &doc.text[m.value.clone()]),
    })
}

/// Reads the whole body, refusing more than `limit` bytes (checked against `Content-Length`
/// first, then while streaming, so a chunked body cannot slip past) and taking no longer than
/// `timeout`.
async fn read_limited(body: Incoming, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    // hyper parsed the Content-Length already: the body's size hint is that length (and 0 for
    // a chunked body, whose size the stream check below catches).
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(ApiError::TooLarge(limit));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wrong shape is a 422 naming the field; a good event gives its type decoded and
    /// its data as minified text (a number beyond f64 included).
    #[test]
    fn event_shape_names_the_field() {
        let err = |body: &str| match event_shape(&rawjson::scan(body.as_bytes()).unwrap()) {
            Err(ApiError::Unprocessable(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err("[]").contains("JSON object"));
        assert!(err(" 1 ").contains("JSON object"));
        assert!(err("{}").contains("\"type\" is required"));
        assert!(err(r#"{"type": 1}"#).contains("must be a string"));
        assert!(err(r#"{"type": "a b"}"#).contains("1-64 characters"));
        assert!(err(&format!(r#"{{"type":"{}"}}"#, "x".repeat(65))).contains("1-64 characters"));
        assert!(err(r#"{"type": "a", "extra": 1}"#).contains("\"extra\""));
        let doc =
            rawjson::scan(br#"{ "type" : "user.signup:v2-a_b", "data" : {"k": 1e400} }"#).unwrap();
        let event = event_shape(&doc).unwrap();
        assert_eq!(&*event.kind, b"user.signup:v2-a_b");
        assert_eq!(event.data, Some(&br#"{"k":1e400}"#[..]));
        let doc = rawjson::scan(br#"{"type":"a\u002eb"}"#).unwrap();
        let event = event_shape(&doc).unwrap();
        assert_eq!((&*event.kind, event.data), (&b"a.b"[..], None));
    }
}

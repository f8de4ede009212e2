//! What the endpoints answer (the proxy's error envelopes) and how they read
//! request bodies.

use crate::litellm::client::hash_key;
use rand::RngExt;
use serde_json::{json, Map, Value};

/// What a handler answers.
pub(super) enum Reply {
    Json(u16, Value),
    Html(u16, &'static str),
}

impl Reply {
    pub(super) fn status(&self) -> u16 {
        match self {
            Reply::Json(s, _) | Reply::Html(s, _) => *s,
        }
    }
}

pub(super) type Outcome = Result<Reply, Reply>;

pub(super) fn ok(body: Value) -> Outcome {
    Ok(Reply::Json(200, body))
}

/// The proxy's `ProxyException` envelope: `code` is a string.
pub(super) fn proxy_error(
    status: u16,
    message: impl Into<String>,
    kind: &str,
    param: &str,
) -> Reply {
    Reply::Json(
        status,
        json!({"error": {
            "message": message.into(),
            "type": kind,
            "param": param,
            "code": status.to_string(),
        }}),
    )
}

/// An `HTTPException(detail={"error": …})` that the endpoint converted with
/// `handle_exception_on_proxy`: the message is the Python repr of the detail
/// and the type says `internal_server_error`, whatever the status.
pub(super) fn wrapped_error(status: u16, detail_error: &str) -> Reply {
    proxy_error(
        status,
        format!("{{'error': '{detail_error}'}}"),
        "internal_server_error",
        "None",
    )
}

/// An `HTTPException(detail={"error": …})` that reached FastAPI unconverted.
pub(super) fn detail_error(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, json!({"detail": {"error": message.into()}}))
}

/// FastAPI's request-validation answer.
pub(super) fn validation_error(field: &str, msg: &str) -> Reply {
    Reply::Json(
        422,
        json!({"detail": [{"type": "value_error", "loc": ["body", field], "msg": msg, "input": null}]}),
    )
}

pub(super) fn abbreviate(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

pub(super) fn token_of(key_or_token: &str) -> String {
    if key_or_token.starts_with("sk-") {
        hash_key(key_or_token)
    } else {
        key_or_token.to_owned()
    }
}

pub(super) fn random_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let tail: String = (0..22)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("sk-{tail}")
}

pub(super) fn str_field<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

pub(super) fn opt_f64(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, Reply> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| validation_error(field, "Input should be a valid number")),
    }
}

pub(super) fn string_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, Reply> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| validation_error(field, "Input should be a valid string"))
            })
            .collect(),
        Some(_) => Err(validation_error(field, "Input should be a valid list")),
    }
}

pub(super) fn object_field(body: &Map<String, Value>, field: &str) -> Result<Value, Reply> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(validation_error(
            field,
            "Input should be a valid dictionary",
        )),
    }
}

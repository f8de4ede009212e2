//! What a failed call says: [`LiteLlmError`], and how an answer or a
//! transport failure becomes one.

use crate::litellm::Call;
use crate::redact::redact_secrets;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Longest piece of a proxy's answer copied into an error message.
const MAX_DETAIL_CHARS: usize = 400;

/// A failed LiteLLM call. Messages are redacted: they never contain a key.
#[derive(Debug, thiserror::Error)]
pub enum LiteLlmError {
    /// Connect errors, timeouts, dropped connections, 408, 429 and 5xx answers: retrying may help.
    #[error("LiteLLM {call}: temporary failure, retrying may help: {message}")]
    Transient {
        /// The call that failed, e.g. `team/new`.
        call: &'static str,
        /// What went wrong (redacted).
        message: String,
    },
    /// A 4xx that retrying cannot fix, or an answer the client cannot use.
    #[error("LiteLLM {call}: failed (HTTP {status}): {message}")]
    Permanent {
        /// The call that failed, e.g. `team/new`.
        call: &'static str,
        /// The HTTP status, or 0 when the failure happened before any answer (bad configuration).
        status: u16,
        /// What went wrong (redacted).
        message: String,
    },
}

impl LiteLlmError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, LiteLlmError::Transient { .. })
    }

    /// The call that failed (`team/new`, `key/generate`, …).
    pub fn call(&self) -> &'static str {
        match self {
            LiteLlmError::Transient { call, .. } | LiteLlmError::Permanent { call, .. } => call,
        }
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            LiteLlmError::Permanent { status, .. } if *status != 0 => Some(*status),
            _ => None,
        }
    }

    pub(super) fn transient(call: impl Into<&'static str>, message: impl AsRef<str>) -> Self {
        LiteLlmError::Transient {
            call: call.into(),
            message: redact_secrets(message.as_ref()),
        }
    }

    pub(super) fn permanent(
        call: impl Into<&'static str>,
        status: u16,
        message: impl AsRef<str>,
    ) -> Self {
        LiteLlmError::Permanent {
            call: call.into(),
            status,
            message: redact_secrets(message.as_ref()),
        }
    }
}

/// An HTTP answer: status, parsed JSON (`Null` when the body is not JSON) and raw text.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) json: Value,
    pub(super) text: String,
}

impl Answer {
    pub(super) fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The error's `type` (error envelope) if any.
    pub(super) fn error_type(&self) -> Option<&str> {
        self.json.get("error")?.get("type")?.as_str()
    }

    /// The human-readable error message from whichever envelope the proxy used:
    /// `{"error": {"message": …}}`, `{"detail": {"error": …}}`, `{"detail": "…"}`,
    /// `{"detail": [validation errors]}`, or the raw body (e.g. a load balancer's HTML).
    pub(super) fn message(&self) -> String {
        fn text_of(v: &Value) -> String {
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
        let j = &self.json;
        let msg = if let Some(err) = j.get("error") {
            match err.get("message") {
                Some(m) => text_of(m),
                None => text_of(err),
            }
        } else if let Some(detail) = j.get("detail") {
            match detail {
                Value::Object(o) => o
                    .get("error")
                    .or_else(|| o.get("message"))
                    .map(text_of)
                    .unwrap_or_else(|| detail.to_string()),
                other => text_of(other),
            }
        } else if let Some(m) = j.get("message") {
            text_of(m)
        } else {
            // Not JSON (a load balancer's HTML page, say): one line of it.
            self.text.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        truncate(&msg, MAX_DETAIL_CHARS)
    }

    /// A one-line description for error messages: type and message.
    pub(super) fn describe(&self) -> String {
        match self.error_type() {
            Some(t) => format!("{} ({t})", self.message()),
            None => self.message(),
        }
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Maps a transport-level failure (no usable HTTP answer) to an error.
pub(super) fn transport_error(call: Call, err: reqwest::Error, timeout: Duration) -> LiteLlmError {
    let err = err.without_url();
    if err.is_builder() || err.is_redirect() {
        return LiteLlmError::permanent(
            call,
            0,
            format!("cannot send the request: {}", chain(&err)),
        );
    }
    if err.is_timeout() {
        return LiteLlmError::transient(
            call,
            format!(
                "no answer within {:.1}s: {}",
                timeout.as_secs_f64(),
                chain(&err)
            ),
        );
    }
    if err.is_connect() {
        return LiteLlmError::transient(call, format!("cannot connect: {}", chain(&err)));
    }
    LiteLlmError::transient(call, format!("connection failed: {}", chain(&err)))
}

/// `err: source: source…`, so that "connection refused" is not hidden behind
/// reqwest's generic "error sending request".
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::litellm::client::{LiteLlmClient, LiteLlmConfig};
    use secrecy::SecretString;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            json: serde_json::from_str(body).unwrap_or(Value::Null),
            text: body.to_owned(),
        }
    }

    #[test]
    fn messages_come_from_every_envelope() {
        let a = answer(
            400,
            r#"{"error":{"message":"{'error': 'Team id = t1 already exists. Please use a different team id.'}","type":"internal_server_error","param":"None","code":"400"}}"#,
        );
        assert!(a.message().contains("already exists"));
        assert_eq!(a.error_type(), Some("internal_server_error"));
        let a = answer(
            404,
            r#"{"detail":{"error":"Team not found for team_id=t1"}}"#,
        );
        assert_eq!(a.message(), "Team not found for team_id=t1");
        let a = answer(404, r#"{"detail":"Not Found"}"#);
        assert_eq!(a.message(), "Not Found");
        let a = answer(502, "<html>502 Bad Gateway</html>");
        assert_eq!(a.message(), "<html>502 Bad Gateway</html>");
    }

    #[test]
    fn statuses_are_classified_first() {
        let client = LiteLlmClient::new(LiteLlmConfig::new(
            "http://127.0.0.1:1",
            SecretString::from("sk-test-master-key-123456"),
        ))
        .unwrap();
        let e = client.fail(
            Call::TeamNew,
            &answer(
                400,
                r#"{"error":{"message":"bad","type":"internal_server_error","code":"400"}}"#,
            ),
        );
        assert!(!e.is_transient());
        assert!(client.fail(Call::TeamNew, &answer(503, "")).is_transient());
        assert!(client.fail(Call::TeamNew, &answer(429, "")).is_transient());
        let e = client.fail(
            Call::TeamNew,
            &answer(401, r#"{"error":{"message":"Authentication Error, Invalid proxy server token passed. Received API Key = sk-...3456","type":"auth_error","code":"401"}}"#),
        );
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("LITELLM_MASTER_KEY") && text.contains("x-goog-api-key"),
            "{text}"
        );
        assert!(!text.contains("3456"), "{text}");
    }
}

//! The HTTP side: routing a request to its endpoint, faults, authentication,
//! parameters and idempotency, then the answer.

use super::customers::execute;
use super::idempotency::{Reservation, ReservationGuard};
use super::Shared;
use crate::simkit::{self, pause, ConnHandle};
use crate::stripe::Call;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::distr::Alphanumeric;
use rand::RngExt;
use serde_json::{json, Value};
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Requests

/// What a request asks for: one of the customer endpoints, or a URL
/// the simulator does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    Call(Call),
    Unknown,
}

impl Endpoint {
    /// The endpoint's name in `--fail` and in [`SimStats`](super::SimStats).
    pub(super) fn name(self) -> &'static str {
        match self {
            Endpoint::Call(call) => call.as_str(),
            Endpoint::Unknown => "unknown",
        }
    }
}

/// Maps a request to an endpoint and, for `/v1/customers/{id}`, the id.
fn route(method: &Method, path: &str) -> (Endpoint, Option<String>) {
    let path = path.trim_end_matches('/');
    if path == "/v1/customers/search" {
        return match *method {
            Method::GET => (Endpoint::Call(Call::SearchCustomers), None),
            _ => (Endpoint::Unknown, None),
        };
    }
    if path == "/v1/customers" {
        return match *method {
            Method::POST => (Endpoint::Call(Call::CreateCustomer), None),
            Method::GET => (Endpoint::Call(Call::ListCustomers), None),
            _ => (Endpoint::Unknown, None),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/customers/") {
        if !id.is_empty() && !id.contains('/') {
            let id = Some(
                percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
            return match *method {
                Method::POST => (Endpoint::Call(Call::UpdateCustomer), id),
                Method::GET => (Endpoint::Call(Call::GetCustomer), id),
                Method::DELETE => (Endpoint::Call(Call::DeleteCustomer), id),
                _ => (Endpoint::Unknown, None),
            };
        }
    }
    (Endpoint::Unknown, None)
}

/// The single entry point: faults, authentication, parameters, idempotency,
/// then the endpoint itself.
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (endpoint, id) = route(&method, uri.path());
    let request_id = random_id("req_", 14);
    let faults = shared.lock().faults.clone();
    let roll = simkit::roll(&faults, endpoint.name());
    let delay = roll.delay;
    let injected = match roll.fail {
        Some((rule, status)) => Some((
            status,
            format!("Simulated failure (--fail {rule}={status}); the request was not performed."),
        )),
        None if roll.drop => {
            pause(delay).await;
            shared.lock().stats.dropped_connections += 1;
            return conn.drop_connection();
        }
        None if roll.error => Some((
            500,
            "An unknown error occurred (simulated; the request was not performed).".to_string(),
        )),
        None => None,
    };
    if let Some((status, message)) = injected {
        pause(delay).await;
        let response = injected_error(status, &message, &request_id);
        return shared.finish(endpoint, response);
    }

    if let Err(message) = check_auth(&shared.api_key, &headers) {
        pause(delay).await;
        let response = error_response(
            StatusCode::UNAUTHORIZED,
            json!({"type": "invalid_request_error", "message": message}),
            &request_id,
        );
        return shared.finish(endpoint, response);
    }

    if endpoint == Endpoint::Unknown {
        pause(delay).await;
        let message = format!(
            "Unrecognized request URL ({}: {}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.",
            method,
            uri.path()
        );
        let response = error_response(
            StatusCode::NOT_FOUND,
            json!({"type": "invalid_request_error", "message": message}),
            &request_id,
        );
        return shared.finish(endpoint, response);
    }

    let params = match read_params(&method, &uri, &headers, &body) {
        Ok(params) => params,
        Err(message) => {
            pause(delay).await;
            let response = error_response(
                StatusCode::BAD_REQUEST,
                json!({"type": "invalid_request_error", "message": message}),
                &request_id,
            );
            return shared.finish(endpoint, response);
        }
    };

    // Idempotency (POST only, as on Stripe).
    let key = if method == Method::POST {
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        None
    };
    let fingerprint = fingerprint(&method, uri.path(), &params);
    let mut guard = ReservationGuard {
        shared: shared.clone(),
        key: None,
    };
    if let Some(key) = &key {
        let reservation = shared.lock().reserve(key, &fingerprint);
        match reservation {
            Reservation::Reserved => guard.key = Some(key.clone()),
            Reservation::Replay {
                status,
                body,
                original_request,
            } => {
                pause(delay).await;
                shared.lock().stats.idempotent_replays += 1;
                let mut response = json_response(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    body,
                    &request_id,
                );
                let h = response.headers_mut();
                h.insert("Idempotent-Replayed", HeaderValue::from_static("true"));
                if let Ok(v) = HeaderValue::from_str(&original_request) {
                    h.insert("Original-Request", v);
                }
                if let Ok(v) = HeaderValue::from_str(key) {
                    h.insert("Idempotency-Key", v);
                }
                return shared.finish(endpoint, response);
            }
            Reservation::Mismatch => {
                pause(delay).await;
                let message = format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                );
                let response = error_response(
                    StatusCode::BAD_REQUEST,
                    json!({"type": "idempotency_error", "message": message}),
                    &request_id,
                );
                return shared.finish(endpoint, response);
            }
            Reservation::InFlight => {
                pause(delay).await;
                let message = format!(
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): {key}. Please try again later."
                );
                let response = error_response(
                    StatusCode::CONFLICT,
                    json!({"type": "idempotency_error", "code": "idempotency_key_in_use", "message": message}),
                    &request_id,
                );
                return shared.finish(endpoint, response);
            }
        }
    }

    // Execute in a task of its own: like Stripe, the work completes even if
    // the client stops waiting.
    let perform_then_502 = faults.perform_then_502 && guard.key.is_some();
    let work = tokio::spawn(async move {
        pause(delay).await;
        let outcome = {
            let mut inner = guard.shared.lock();
            execute(&mut inner, endpoint, id.as_deref(), &params)
        };
        let shared = guard.shared.clone();
        if outcome.executed {
            guard.complete(
                fingerprint,
                outcome.status.as_u16(),
                outcome.body.to_string(),
                request_id.clone(),
            );
        }
        // An unexecuted request (a validation error) releases its key on drop.
        let response = if perform_then_502 && outcome.executed {
            error_response(
                StatusCode::BAD_GATEWAY,
                json!({"type": "api_error", "message": "Bad gateway (simulated: the request was performed, its response lost)."}),
                &request_id,
            )
        } else {
            let mut response = json_response(outcome.status, outcome.body.to_string(), &request_id);
            if let Some(v) = key.as_deref().and_then(|k| HeaderValue::from_str(k).ok()) {
                response.headers_mut().insert("Idempotency-Key", v);
            }
            response
        };
        shared.finish(endpoint, response)
    });
    match work.await {
        Ok(response) => response,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The request's parameters: the query for GET and DELETE, the
/// form-encoded body for POST.
fn read_params(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    if *method != Method::POST {
        return Ok(parse_urlencoded(uri.query().unwrap_or("")));
    }
    if !body.is_empty() {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(format!(
                "Invalid request: unsupported Content-Type {content_type:?}. Stripe's API takes application/x-www-form-urlencoded bodies."
            ));
        }
    }
    let body = std::str::from_utf8(body)
        .map_err(|_| "Invalid request: the body is not UTF-8.".to_string())?;
    let mut params = parse_urlencoded(uri.query().unwrap_or(""));
    params.extend(parse_urlencoded(body));
    Ok(params)
}

/// Parses `a=1&b%5Bc%5D=2` into pairs (`+` is a space).
pub(super) fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

/// What identifies "the same request" for an idempotency key.
fn fingerprint(method: &Method, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut out = format!("{method} {}", path.trim_end_matches('/'));
    for (k, v) in sorted {
        out.push('\n');
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Checks `Authorization: Bearer <key>` (or Basic with the key as user
/// name, which Stripe also accepts); the error message masks the key sent.
fn check_auth(expected: &str, headers: &HeaderMap) -> Result<(), String> {
    const NO_KEY: &str = "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.";
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(NO_KEY.to_string());
    };
    let value = value.trim();
    let sent = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_string()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        decoded.split(':').next().unwrap_or_default().to_string()
    } else {
        return Err(NO_KEY.to_string());
    };
    if sent.is_empty() {
        return Err(NO_KEY.to_string());
    }
    if sent == expected {
        Ok(())
    } else {
        Err(format!("Invalid API Key provided: {}", mask_key(&sent)))
    }
}

/// Masks a key the way Stripe does: its `sk_test_`-style prefix, asterisks,
/// and the last four characters only when the key is long enough.
pub(super) fn mask_key(key: &str) -> String {
    let prefix_len = ["sk_test_", "sk_live_", "rk_test_", "rk_live_", "sk_", "rk_"]
        .iter()
        .find(|p| key.starts_with(*p))
        .map_or(0, |p| p.len());
    let rest: Vec<char> = key[prefix_len..].chars().collect();
    if rest.len() >= 16 {
        let shown: String = rest[rest.len() - 4..].iter().collect();
        format!(
            "{}{}{shown}",
            &key[..prefix_len],
            "*".repeat(rest.len() - 4)
        )
    } else {
        format!("{}{}", &key[..prefix_len], "*".repeat(rest.len()))
    }
}

pub(super) fn random_id(prefix: &str, len: usize) -> String {
    let tail: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{tail}")
}

fn json_response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("Request-Id", v);
    }
    response
}

fn error_response(status: StatusCode, error: Value, request_id: &str) -> Response {
    json_response(status, json!({ "error": error }).to_string(), request_id)
}

/// The answer to a `--fail` rule or the error rate, shaped like Stripe's for that status.
fn injected_error(status: u16, message: &str, request_id: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, code) = match status.as_u16() {
        402 => ("card_error", Some("card_declined")),
        404 => ("invalid_request_error", Some("resource_missing")),
        409 => ("idempotency_error", Some("idempotency_key_in_use")),
        429 => ("invalid_request_error", Some("rate_limit")),
        s if s >= 500 => ("api_error", None),
        _ => ("invalid_request_error", None),
    };
    let mut error = json!({"type": kind, "message": message});
    if let Some(code) = code {
        error["code"] = json!(code);
    }
    error_response(status, error, request_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::simulator::SimulatorArgs;

    #[test]
    fn form_bodies_decode_bracketed_keys_and_empty_values() {
        let params = parse_urlencoded(
            "metadata%5Borg_id%5D=o-1&metadata%5Buser_id%5D=&email=a%2Bb%40x.io&name=A+B",
        );
        assert_eq!(
            params,
            vec![
                ("metadata[org_id]".to_string(), "o-1".to_string()),
                ("metadata[user_id]".to_string(), String::new()),
                ("email".to_string(), "a+b@x.io".to_string()),
                ("name".to_string(), "A B".to_string()),
            ]
        );
        // A `%` that starts no escape is kept.
        assert_eq!(
            parse_urlencoded("a=100%&b=%4&c=%zz%41"),
            vec![
                ("a".to_string(), "100%".to_string()),
                ("b".to_string(), "%4".to_string()),
                ("c".to_string(), "%zzA".to_string()),
            ]
        );
    }

    #[test]
    fn keys_are_masked_like_stripe() {
        let masked = mask_key("sk_test_abcdefghijklmnopqrstuvwxyz");
        assert!(
            masked.starts_with("sk_test_") && masked.ends_with("wxyz"),
            "{masked}"
        );
        assert!(!masked.contains("abcdef"));
        assert_eq!(mask_key("sk_test_short"), "sk_test_*****");
        let args = SimulatorArgs {
            api_key: "sk_test_verysecretvalue123".into(),
            ..SimulatorArgs::local()
        };
        assert!(!format!("{args:?}").contains("verysecret"));
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/v1/customers").0,
            Endpoint::Call(Call::CreateCustomer)
        );
        assert_eq!(
            route(&Method::GET, "/v1/customers").0,
            Endpoint::Call(Call::ListCustomers)
        );
        assert_eq!(
            route(&Method::GET, "/v1/customers/search").0,
            Endpoint::Call(Call::SearchCustomers)
        );
        assert_eq!(
            route(&Method::POST, "/v1/customers/search").0,
            Endpoint::Unknown
        );
        assert_eq!(
            route(&Method::POST, "/v1/customers/cus_1"),
            (Endpoint::Call(Call::UpdateCustomer), Some("cus_1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/customers/cus_1").0,
            Endpoint::Call(Call::DeleteCustomer)
        );
        assert_eq!(
            route(&Method::GET, "/v1/customers/a/b").0,
            Endpoint::Unknown
        );
        assert_eq!(
            route(&Method::PUT, "/v1/customers/cus_1").0,
            Endpoint::Unknown
        );
    }
}

//! The Stripe API client: the customer calls the daemon makes, each
//! classified into a transient failure (retry later, with the same
//! idempotency key) or a permanent one (retrying cannot fix it).
//!
//! The client never retries by itself: retry policy, backoff and attempts
//! belong to the outbox. It never touches the database either.
//!
//! Secrets: the API key lives in a [`SecretString`], is sent only as a
//! sensitive `Authorization: Bearer` header, and every text that reaches an
//! error passes through [`redact_secrets`] first.

use crate::redact::redact_secrets;
use crate::stripe::Call;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The longest idempotency key Stripe accepts.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The most customers one list call can return (Stripe's `limit` range is 1..=100).
pub const MAX_LIST_LIMIT: u32 = 100;

/// How to reach Stripe.
#[derive(Clone, Debug)]
pub struct StripeConfig {
    /// Base URL without the `/v1` suffix, e.g. `https://api.stripe.com`
    /// (or a simulator's [`base_url`](crate::stripe::StripeSimulator::base_url)).
    pub base_url: String,
    /// The secret key (`sk_…`), sent as `Authorization: Bearer`.
    pub api_key: SecretString,
    /// Upper bound for one whole request (connect, send, read the response).
    pub timeout: Duration,
}

/// A Stripe customer, reduced to the fields orgkeeper reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Stripe's id, `cus_…`.
    pub id: String,
    /// The customer's email, if any.
    pub email: Option<String>,
    /// The customer's name, if any.
    pub name: Option<String>,
    /// Free-form string metadata (orgkeeper stores `org_id` here).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Why a Stripe call failed.
///
/// Every message is redacted (no API key can appear in it), so the error may
/// be logged and stored as is.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Retrying the same call later (with the same idempotency key) may
    /// succeed: 408, 409 (a concurrent request holds the idempotency key), 429,
    /// 5xx, connection failures and timeouts.
    #[error("stripe {call}: transient failure: {message}")]
    Transient {
        /// The call that failed (`create_customer`, `update_customer`, `get_customer`, `list_customers`, `search_customers`).
        call: &'static str,
        /// What happened, redacted.
        message: String,
    },
    /// Retrying cannot help: a 4xx other than 408/409/429 (bad parameters, an
    /// idempotency key reused with different parameters, a missing customer,
    /// a wrong API key), a response that is not what Stripe sends, or an
    /// argument rejected before sending (`status` 0).
    #[error("stripe {call}: HTTP {status} {kind}: {message}")]
    Permanent {
        /// The call that failed.
        call: &'static str,
        /// The HTTP status; 0 when the request was refused before it was sent.
        status: u16,
        /// Stripe's `error.type` (`invalid_request_error`, `idempotency_error`,
        /// `card_error`, …); `invalid_argument` or `invalid_response` when the
        /// client itself refused.
        kind: String,
        /// Stripe's `error.code` when it sent one (`resource_missing`, …).
        code: Option<String>,
        /// Stripe's `error.message` (redacted), with its request id.
        message: String,
    },
}

impl StripeError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StripeError::Transient { .. })
    }

    /// The call that failed.
    pub fn call(&self) -> &'static str {
        match self {
            StripeError::Transient { call, .. } | StripeError::Permanent { call, .. } => call,
        }
    }

    /// Stripe's `error.code` (for example `resource_missing`), if the error carried one.
    pub fn code(&self) -> Option<&str> {
        match self {
            StripeError::Permanent { code, .. } => code.as_deref(),
            StripeError::Transient { .. } => None,
        }
    }

    /// The HTTP status of a permanent failure's answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            StripeError::Permanent { status, .. } if *status != 0 => Some(*status),
            _ => None,
        }
    }

    fn transient(call: &'static str, message: impl AsRef<str>) -> Self {
        StripeError::Transient {
            call,
            message: redact_secrets(message.as_ref()),
        }
    }

    fn invalid_argument(call: &'static str, message: impl AsRef<str>) -> Self {
        StripeError::Permanent {
            call,
            status: 0,
            kind: "invalid_argument".into(),
            code: None,
            message: redact_secrets(message.as_ref()),
        }
    }
}

/// A Stripe API client. Cheap to clone (the connection pool is shared);
/// its `Debug` output never shows the API key.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base_url: Arc<str>,
    api_key: SecretString,
    timeout: Duration,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeClient")
            .field("base_url", &self.base_url)
            .field("api_key", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Stripe's error envelope: `{"error": {"type", "message", "code", ...}}`.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
    code: Option<String>,
}

/// A customer as Stripe sends it; a deleted customer is `{"id", "deleted": true}`.
#[derive(Deserialize)]
struct CustomerWire {
    id: String,
    #[serde(default)]
    deleted: bool,
    email: Option<String>,
    name: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

impl From<CustomerWire> for Customer {
    fn from(w: CustomerWire) -> Self {
        Customer {
            id: w.id,
            email: w.email,
            name: w.name,
            metadata: w.metadata.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct ListWire {
    data: Vec<CustomerWire>,
}

/// `{"object": "search_result", "data": [...], "has_more": …}`.
#[derive(Deserialize)]
struct SearchWire {
    object: String,
    data: Vec<CustomerWire>,
    #[serde(default)]
    has_more: bool,
}

/// What a customer search found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchResult {
    /// The customers found (deleted ones are left out), in Stripe's order.
    pub customers: Vec<Customer>,
    /// Whether Stripe has more results than this page.
    pub has_more: bool,
}

/// Why `value` cannot go into a search query as `'value'`, if it cannot:
/// only letters, digits, `-`, `_` and `.` are accepted, so no quote,
/// backslash or query operator can change what the query means.
pub fn search_value_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("the value is empty".into());
    }
    if value.len() > 500 {
        return Some("the value is longer than 500 characters".into());
    }
    value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .map(|c| format!("the value contains {c:?}; only letters, digits, '-', '_' and '.' may be searched for"))
}

impl StripeClient {
    /// Builds a client. Fails (permanently) if the base URL is not an
    /// http(s) URL, the key cannot be sent as a header, or the timeout is zero.
    pub fn new(config: StripeConfig) -> Result<Self, StripeError> {
        const CALL: &str = "new";
        let base_url = config.base_url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(StripeError::invalid_argument(
                    CALL,
                    format!("base URL {base_url:?} is not an http(s) URL"),
                ))
            }
        }
        if config.api_key.expose_secret().is_empty() {
            return Err(StripeError::invalid_argument(CALL, "the API key is empty"));
        }
        if HeaderValue::from_str(&format!("Bearer {}", config.api_key.expose_secret())).is_err() {
            // Never echo the key: say only what is wrong with it.
            return Err(StripeError::invalid_argument(
                CALL,
                "the API key contains characters that cannot be sent in a header",
            ));
        }
        if config.timeout.is_zero() {
            return Err(StripeError::invalid_argument(CALL, "the timeout is zero"));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            // A redirect would carry the key somewhere Stripe never sends us.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orgkeeper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::invalid_argument(CALL, format!("HTTP client: {e}")))?;
        Ok(StripeClient {
            http,
            base_url: base_url.into(),
            api_key: config.api_key,
            timeout: config.timeout,
        })
    }

    /// `POST /v1/customers/{id}`: sets `metadata[k]=v` for each pair (an
    /// empty value deletes the key, as on real Stripe) and the email when
    /// `Some` (`Some("")` clears it). Sends `Idempotency-Key`, so a retry with
    /// the same key replays the first result instead of acting twice.
    pub async fn update_customer(
        &self,
        customer_id: &str,
        metadata: &[(&str, &str)],
        email: Option<&str>,
        idempotency_key: &str,
    ) -> Result<Customer, StripeError> {
        const CALL: &str = Call::UpdateCustomer.as_str();
        let path = format!("/v1/customers/{}", path_segment(CALL, customer_id)?);
        let mut form = metadata_form(metadata);
        if let Some(email) = email {
            form.push(("email".into(), email.into()));
        }
        let body = self
            .send(
                CALL,
                reqwest::Method::POST,
                &path,
                Some(&form),
                &[],
                Some(idempotency_key),
            )
            .await?;
        Ok(parse_customer(CALL, &body)?.into())
    }

    /// `POST /v1/customers` with `name`, `email` (when `Some`) and
    /// `metadata[k]=v`; sends `Idempotency-Key`, so a retry with the same key
    /// returns the customer the first attempt created. (Stripe forgets keys
    /// after 24 hours: look the customer up before creating on late retries.)
    pub async fn create_customer(
        &self,
        name: &str,
        email: Option<&str>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<Customer, StripeError> {
        const CALL: &str = Call::CreateCustomer.as_str();
        let mut form = vec![("name".to_string(), name.to_string())];
        if let Some(email) = email {
            form.push(("email".into(), email.into()));
        }
        form.extend(metadata_form(metadata));
        let body = self
            .send(
                CALL,
                reqwest::Method::POST,
                "/v1/customers",
                Some(&form),
                &[],
                Some(idempotency_key),
            )
            .await?;
        Ok(parse_customer(CALL, &body)?.into())
    }

    /// `GET /v1/customers/{id}`: `None` when Stripe answers 404
    /// (`resource_missing`) or the customer is deleted. A 404 for an
    /// unrecognized URL (a wrong base URL) stays an error.
    pub async fn get_customer(&self, customer_id: &str) -> Result<Option<Customer>, StripeError> {
        const CALL: &str = Call::GetCustomer.as_str();
        let path = format!("/v1/customers/{}", path_segment(CALL, customer_id)?);
        match self
            .send(CALL, reqwest::Method::GET, &path, None, &[], None)
            .await
        {
            Ok(body) => {
                let wire = parse_customer(CALL, &body)?;
                Ok((!wire.deleted).then(|| wire.into()))
            }
            // A missing customer, not a wrong base URL (Stripe's "Unrecognized request URL").
            Err(StripeError::Permanent {
                status: 404,
                message,
                ..
            }) if !message.starts_with("Unrecognized request URL") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/customers?email=…&limit=…`: the first page of customers whose
    /// email matches exactly (Stripe compares case-sensitively), newest first.
    /// `limit` is clamped to 1..=100.
    pub async fn list_customers_by_email(
        &self,
        email: &str,
        limit: u32,
    ) -> Result<Vec<Customer>, StripeError> {
        const CALL: &str = Call::ListCustomers.as_str();
        let limit = limit.clamp(1, MAX_LIST_LIMIT).to_string();
        let query = [("email", email), ("limit", limit.as_str())];
        let body = self
            .send(
                CALL,
                reqwest::Method::GET,
                "/v1/customers",
                None,
                &query,
                None,
            )
            .await?;
        let list: ListWire = serde_json::from_slice(&body)
            .map_err(|e| invalid_response(CALL, format!("not a customer list: {e}")))?;
        Ok(list
            .data
            .into_iter()
            .filter(|c| !c.deleted)
            .map(Customer::from)
            .collect())
    }

    /// `GET /v1/customers/search?query=metadata['org_id']:'<org_id>'`: the
    /// customers tagged with this org (first page, up to 100).
    ///
    /// The org id is checked before anything is sent (letters, digits, `-`,
    /// `_`, `.`), so it cannot change the query. On real Stripe, search is
    /// eventually consistent: a customer created seconds ago may be missing.
    /// It complements the creating call's `Idempotency-Key` (which covers
    /// that window) by finding customers after Stripe forgot the key (24 h).
    pub async fn search_customers_by_org(&self, org_id: &str) -> Result<SearchResult, StripeError> {
        const CALL: &str = Call::SearchCustomers.as_str();
        if let Some(problem) = search_value_problem(org_id) {
            return Err(StripeError::invalid_argument(
                CALL,
                format!("org id {org_id:?} cannot be searched for: {problem}"),
            ));
        }
        let query = format!("metadata['org_id']:'{org_id}'");
        let params = [("query", query.as_str()), ("limit", "100")];
        let body = self
            .send(
                CALL,
                reqwest::Method::GET,
                "/v1/customers/search",
                None,
                &params,
                None,
            )
            .await?;
        let wire: SearchWire = serde_json::from_slice(&body)
            .map_err(|e| invalid_response(CALL, format!("not a search result: {e}")))?;
        if wire.object != "search_result" {
            return Err(invalid_response(
                CALL,
                format!("expected object \"search_result\", got {:?}", wire.object),
            ));
        }
        Ok(SearchResult {
            customers: wire
                .data
                .into_iter()
                .filter(|c| !c.deleted)
                .map(Customer::from)
                .collect(),
            has_more: wire.has_more,
        })
    }

    /// Sends one request and returns the body of a 2xx answer; every other
    /// outcome becomes a classified [`StripeError`].
    async fn send(
        &self,
        call: &'static str,
        method: reqwest::Method,
        path: &str,
        form: Option<&[(String, String)]>,
        query: &[(&str, &str)],
        idempotency_key: Option<&str>,
    ) -> Result<Vec<u8>, StripeError> {
        let mut headers = HeaderMap::new();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.api_key.expose_secret()))
            .map_err(|_| {
            StripeError::invalid_argument(call, "the API key cannot be sent in a header")
        })?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        if let Some(key) = idempotency_key {
            headers.insert("Idempotency-Key", idempotency_header(call, key)?);
        }
        let url = format!("{}{}", self.base_url, path);
        let mut request = self.http.request(method, &url).headers(headers);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(form) = form {
            request = request.form(form);
        }
        let response = request.send().await.map_err(|e| request_error(call, e))?;
        let status = response.status();
        let should_retry = response
            .headers()
            .get("Stripe-Should-Retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let request_id = response
            .headers()
            .get("Request-Id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status.is_redirection() {
            return Err(StripeError::Permanent {
                call,
                status: status.as_u16(),
                kind: "redirect".into(),
                code: None,
                message: crate::redact::redirect_refused(
                    "STRIPE_BASE_URL",
                    &url,
                    response.headers(),
                ),
            });
        }
        let body = response.bytes().await.map_err(|e| request_error(call, e))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        Err(classify(
            call,
            status,
            should_retry,
            request_id.as_deref(),
            &body,
        ))
    }
}

/// `metadata[k]=v` pairs, in the caller's order.
fn metadata_form(metadata: &[(&str, &str)]) -> Vec<(String, String)> {
    metadata
        .iter()
        .map(|(k, v)| (format!("metadata[{k}]"), (*v).to_string()))
        .collect()
}

/// A customer id as one URL path segment; an empty id is refused, since
/// `GET /v1/customers/` would be a different call.
fn path_segment(call: &'static str, id: &str) -> Result<String, StripeError> {
    if id.is_empty() {
        return Err(StripeError::invalid_argument(
            call,
            "the customer id is empty",
        ));
    }
    // Everything but RFC 3986's unreserved characters is escaped.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    Ok(percent_encoding::utf8_percent_encode(id, ESCAPED).to_string())
}

fn idempotency_header(call: &'static str, key: &str) -> Result<HeaderValue, StripeError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(StripeError::invalid_argument(
            call,
            format!("the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
        ));
    }
    HeaderValue::from_str(key).map_err(|_| {
        StripeError::invalid_argument(
            call,
            "the idempotency key has characters a header cannot carry",
        )
    })
}

fn parse_customer(call: &'static str, body: &[u8]) -> Result<CustomerWire, StripeError> {
    serde_json::from_slice(body).map_err(|e| invalid_response(call, format!("not a customer: {e}")))
}

fn invalid_response(call: &'static str, message: String) -> StripeError {
    StripeError::Permanent {
        call,
        status: 200,
        kind: "invalid_response".into(),
        code: None,
        message: redact_secrets(&message),
    }
}

/// A failure before a complete response arrived. Only a request that could
/// not be built is permanent; connect errors, timeouts and connections
/// dropped mid-exchange are transient (the request may or may not have been
/// performed — the idempotency key makes the retry safe).
fn request_error(call: &'static str, e: reqwest::Error) -> StripeError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "connection failed while reading the response"
    } else {
        "request failed"
    };
    // The error's source chain says why (e.g. "connection closed before message completed").
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_builder() {
        return StripeError::invalid_argument(call, format!("{what}: {detail}"));
    }
    StripeError::transient(call, format!("{what}: {detail}"))
}

/// Maps a non-2xx answer to an error: `Stripe-Should-Retry` decides when
/// present (Stripe's own libraries honour it); otherwise 408, 409, 429 and 5xx
/// are transient and every other status is permanent.
fn classify(
    call: &'static str,
    status: StatusCode,
    should_retry: Option<bool>,
    request_id: Option<&str>,
    body: &[u8],
) -> StripeError {
    let envelope = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error);
    let kind = envelope
        .as_ref()
        .and_then(|e| e.kind.clone())
        .unwrap_or_else(|| "unknown".to_string());
    let code = envelope.as_ref().and_then(|e| e.code.clone());
    let mut message = match envelope.as_ref().and_then(|e| e.message.clone()) {
        Some(m) => m,
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no body").to_string()
            } else {
                text.chars().take(300).collect()
            }
        }
    };
    if let Some(code) = &code {
        message.push_str(&format!(" (code {code})"));
    }
    if let Some(id) = request_id {
        message.push_str(&format!(" [request {id}]"));
    }
    let transient = should_retry.unwrap_or_else(|| {
        status == StatusCode::CONFLICT
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
    });
    if transient {
        StripeError::transient(call, format!("HTTP {} {kind}: {message}", status.as_u16()))
    } else {
        StripeError::Permanent {
            call,
            status: status.as_u16(),
            kind,
            code,
            message: redact_secrets(&message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_status_and_should_retry() {
        let body = br#"{"error":{"type":"api_error","message":"boom"}}"#;
        assert!(classify("c", StatusCode::INTERNAL_SERVER_ERROR, None, None, body).is_transient());
        assert!(classify("c", StatusCode::TOO_MANY_REQUESTS, None, None, body).is_transient());
        assert!(classify("c", StatusCode::CONFLICT, None, None, body).is_transient());
        assert!(!classify("c", StatusCode::BAD_REQUEST, None, None, body).is_transient());
        assert!(!classify(
            "c",
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(false),
            None,
            body
        )
        .is_transient());
        assert!(classify("c", StatusCode::BAD_REQUEST, Some(true), None, body).is_transient());
    }

    #[test]
    fn permanent_errors_carry_type_code_and_redacted_message() {
        let body = br#"{"error":{"type":"invalid_request_error","code":"api_key_expired","message":"Expired API Key provided: sk_live_abcdefgh1234"}}"#;
        let e = classify(
            "get_customer",
            StatusCode::UNAUTHORIZED,
            None,
            Some("req_1"),
            body,
        );
        match &e {
            StripeError::Permanent {
                status,
                kind,
                code,
                message,
                ..
            } => {
                assert_eq!(*status, 401);
                assert_eq!(kind, "invalid_request_error");
                assert_eq!(code.as_deref(), Some("api_key_expired"));
                assert!(message.contains("req_1"), "{message}");
            }
            other => panic!("expected permanent, got {other:?}"),
        }
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("abcdefgh1234"), "{shown}");
    }

    #[test]
    fn non_json_error_bodies_are_kept_short() {
        let body = "x".repeat(5000);
        let e = classify("c", StatusCode::BAD_GATEWAY, None, None, body.as_bytes());
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn search_values_that_could_change_the_query_are_refused() {
        assert_eq!(
            search_value_problem("0b9c2f6e-4f7a-4b8e-9a55-3f1d2c4b5a69"),
            None
        );
        for bad in ["", "x' OR email:'a", "a\\b", "a b", "a:b", "é"] {
            assert!(search_value_problem(bad).is_some(), "{bad:?}");
        }
        assert!(search_value_problem(&"a".repeat(501)).is_some());
    }

    #[test]
    fn path_segments_are_escaped_and_empty_ids_refused() {
        assert_eq!(path_segment("c", "cus_ABC123").unwrap(), "cus_ABC123");
        assert_eq!(path_segment("c", "a/b c").unwrap(), "a%2Fb%20c");
        assert_eq!(path_segment("c", "é~.-_").unwrap(), "%C3%A9~.-_");
        assert!(path_segment("c", "").is_err());
    }

    #[test]
    fn config_errors_and_debug_never_show_the_key() {
        let key = "sk_test_supersecretvalue42";
        let client = StripeClient::new(StripeConfig {
            base_url: "http://127.0.0.1:1/".into(),
            api_key: SecretString::from(key),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert!(!format!("{client:?}").contains("supersecret"));
        let bad = StripeClient::new(StripeConfig {
            base_url: "http://127.0.0.1:1".into(),
            api_key: SecretString::from(format!("{key}\n")),
            timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(!format!("{bad} {bad:?}").contains("supersecret"));
        assert!(StripeClient::new(StripeConfig {
            base_url: "ftp://x".into(),
            api_key: SecretString::from(key),
            timeout: Duration::from_secs(1),
        })
        .is_err());
    }
}

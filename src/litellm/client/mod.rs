//! The LiteLLM admin-API client: one typed method per call the daemon makes,
//! each idempotent under retry in the way `shared/spec/litellm.md` describes
//! (an "already exists" answer is confirmed and reported as
//! [`Created::Existing`], an "already gone" answer as [`Deleted::AlreadyGone`]).
//!
//! The client knows HTTP, never the database. It does not retry on its own:
//! every error says whether retrying may help ([`LiteLlmError::is_transient`]),
//! and the outbox decides when to try again. No key ever reaches an error
//! message, a log line or `Debug` output: bodies are passed through
//! [`redact_secrets`], the auth header is marked sensitive, and keys are looked
//! up by their SHA-256 token rather than sent in URLs.
//!
//! The client's configuration and transport live here; the calls by family in
//! `teams`, `users` and `keys`, what a failure says in `error`.

use crate::litellm::Call;
use crate::redact::redact_secrets;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

mod error;
mod keys;
mod teams;
mod users;

pub use error::LiteLlmError;
pub use keys::{ListedKey, NewKey};
pub use teams::{MemberBudget, NewTeam, TeamInfo, TeamOwner};
pub use users::{NewUser, UserInfo};

use error::{chain, transport_error, Answer};

/// The header the seeds (OpenHands) send the master key in.
pub const DEFAULT_AUTH_HEADER: &str = "x-goog-api-key";

/// The `max_budget` LiteLLM users get once their budget moved to their
/// organization's team: "unlimited" as OpenHands writes it.
pub const UNLIMITED_MAX_BUDGET: f64 = 1_000_000_000.0;

/// How long a key check (`GET /v1/models` with the member's key) may take.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the proxy is and how to authenticate to it.
#[derive(Clone)]
pub struct LiteLlmConfig {
    /// Base URL of the proxy, e.g. `http://127.0.0.1:4000` (a trailing `/` is ignored).
    pub base_url: String,
    /// The proxy's master key (`sk-…`).
    pub master_key: SecretString,
    /// Header carrying the key: `Authorization` sends `Bearer <key>`, any other
    /// name (`x-goog-api-key`, `x-litellm-api-key`, …) sends the raw key.
    pub auth_header: String,
    /// Whole-request timeout (connect, send, read the answer).
    pub timeout: Duration,
}

impl LiteLlmConfig {
    /// A configuration with the seeds' header ([`DEFAULT_AUTH_HEADER`]) and a 30-second timeout.
    pub fn new(base_url: impl Into<String>, master_key: SecretString) -> Self {
        Self {
            base_url: base_url.into(),
            master_key,
            auth_header: DEFAULT_AUTH_HEADER.to_owned(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for LiteLlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiteLlmConfig")
            .field("base_url", &redact_secrets(&self.base_url))
            .field("master_key", &"[REDACTED]")
            .field("auth_header", &self.auth_header)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Result of an idempotent create call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    New,
    /// It was already there (a retry after an earlier attempt, or another replica).
    Existing,
}

/// Result of an idempotent delete call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// This call deleted it.
    Deleted,
    /// There was nothing to delete.
    AlreadyGone,
}

/// The LiteLLM admin-API client. Cheap to clone (one shared connection pool).
#[derive(Clone)]
pub struct LiteLlmClient {
    http: reqwest::Client,
    /// Sends no master key: for asking what a member's own key may do.
    probe: reqwest::Client,
    /// Kept only to scrub it from the proxy's answers before they become errors.
    master_key: SecretString,
    base_url: Arc<str>,
    auth_header: HeaderName,
    /// The header name as the operator spelled it, for messages.
    auth_header_name: Arc<str>,
    timeout: Duration,
}

impl fmt::Debug for LiteLlmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiteLlmClient")
            .field("base_url", &redact_secrets(&self.base_url))
            .field("auth_header", &&*self.auth_header_name)
            .field("master_key", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// SHA-256 hex digest: the token LiteLLM stores for a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl LiteLlmClient {
    /// Builds the client. Fails (permanently) when the base URL, the header
    /// name or the key cannot be used.
    pub fn new(config: LiteLlmConfig) -> Result<Self, LiteLlmError> {
        const CALL: &str = "configuration";
        let base_url = config.base_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base_url).map_err(|e| {
            LiteLlmError::permanent(
                CALL,
                0,
                format!("LITELLM_BASE_URL {base_url:?} is not a valid URL: {e}"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(LiteLlmError::permanent(
                CALL,
                0,
                format!("LITELLM_BASE_URL {base_url:?} must be an http:// or https:// URL"),
            ));
        }
        let name = config.auth_header.trim();
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            LiteLlmError::permanent(
                CALL,
                0,
                format!("LITELLM_AUTH_HEADER {name:?} is not a valid HTTP header name"),
            )
        })?;
        let key = config.master_key.expose_secret().trim();
        if key.is_empty() {
            return Err(LiteLlmError::permanent(
                CALL,
                0,
                "LITELLM_MASTER_KEY is empty",
            ));
        }
        let raw = if header == AUTHORIZATION {
            format!("Bearer {key}")
        } else {
            key.to_owned()
        };
        let mut value = HeaderValue::from_str(&raw).map_err(|_| {
            LiteLlmError::permanent(
                CALL,
                0,
                "LITELLM_MASTER_KEY contains characters that cannot be sent in an HTTP header",
            )
        })?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(header.clone(), value);

        let loopback = url.host_str().is_some_and(|host| {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        let build = |headers: HeaderMap, timeout: Duration| {
            let mut builder = reqwest::Client::builder()
                .default_headers(headers)
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(30))
                // A redirect would carry the master key to a host nobody configured
                // (reqwest keeps custom headers across hosts): never follow one.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("orgkeeper/", env!("CARGO_PKG_VERSION")));
            if loopback {
                // A proxy from the environment must not intercept a local proxy/simulator.
                builder = builder.no_proxy();
            }
            builder.build().map_err(|e| {
                LiteLlmError::permanent(
                    CALL,
                    0,
                    format!("cannot build the HTTP client: {}", chain(&e)),
                )
            })
        };
        let http = build(headers, config.timeout)?;
        // Member keys are checked without the master key attached.
        let probe = build(HeaderMap::new(), KEY_CHECK_TIMEOUT)?;
        Ok(Self {
            http,
            probe,
            master_key: SecretString::from(key),
            base_url: base_url.into(),
            auth_header: header,
            auth_header_name: name.into(),
            timeout: config.timeout,
        })
    }

    /// The base URL the client talks to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base_url, path))
    }

    async fn send(&self, call: Call, req: RequestBuilder) -> Result<Answer, LiteLlmError> {
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(call, e, self.timeout))?;
        let status = resp.status();
        if status.is_redirection() {
            let mut url = resp.url().clone();
            url.set_query(None);
            return Err(LiteLlmError::permanent(
                call,
                status.as_u16(),
                crate::redact::redirect_refused("LITELLM_BASE_URL", url.as_str(), resp.headers()),
            ));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(call, e, self.timeout))?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
        let answer = Answer { status, json, text };
        tracing::debug!(
            call = call.as_str(),
            status = status.as_u16(),
            "litellm answered"
        );
        Ok(answer)
    }

    async fn post(&self, call: Call, body: &Value) -> Result<Answer, LiteLlmError> {
        self.send(
            call,
            self.request(Method::POST, &format!("/{call}")).json(body),
        )
        .await
    }

    async fn get(&self, call: Call, query: &[(&str, &str)]) -> Result<Answer, LiteLlmError> {
        self.send(
            call,
            self.request(Method::GET, &format!("/{call}")).query(query),
        )
        .await
    }

    /// The answer's description with the master key removed, even where it
    /// would not look like a key to [`redact_secrets`].
    fn describe(&self, answer: &Answer) -> String {
        let text = answer.describe();
        let key = self.master_key.expose_secret();
        if key.len() >= 4 {
            text.replace(key, "[REDACTED]")
        } else {
            text
        }
    }

    /// The error for an answer that none of the call's special cases accepted.
    fn fail(&self, call: Call, answer: &Answer) -> LiteLlmError {
        let status = answer.status.as_u16();
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => LiteLlmError::permanent(
                call,
                status,
                format!(
                    "the proxy {} the master key: check LITELLM_MASTER_KEY (it must be the \
                     proxy's master key) and LITELLM_AUTH_HEADER (sending it in header {:?}{}); \
                     the proxy said: {}",
                    if answer.status == StatusCode::UNAUTHORIZED {
                        "rejected"
                    } else {
                        "did not allow this call with"
                    },
                    &*self.auth_header_name,
                    if self.auth_header == AUTHORIZATION {
                        " as \"Bearer <key>\""
                    } else {
                        ""
                    },
                    self.describe(answer)
                ),
            ),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                LiteLlmError::transient(call, format!("HTTP {status}: {}", self.describe(answer)))
            }
            s if s.is_server_error() => {
                LiteLlmError::transient(call, format!("HTTP {status}: {}", self.describe(answer)))
            }
            _ if answer.is_success() => LiteLlmError::permanent(
                call,
                status,
                format!("unexpected answer: {}", self.describe(answer)),
            ),
            _ => LiteLlmError::permanent(call, status, self.describe(answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configuration_is_permanent_and_secret_free() {
        let mut config = LiteLlmConfig::new(
            "http://127.0.0.1:4000",
            SecretString::from("sk-bad\nkey-123456789"),
        );
        let e = LiteLlmClient::new(config.clone()).unwrap_err();
        assert!(!e.is_transient() && !e.to_string().contains("key-123456789"));
        config.master_key = SecretString::from("sk-good-key-123456789");
        config.auth_header = "bad header".into();
        assert!(LiteLlmClient::new(config.clone()).is_err());
        config.auth_header = "Authorization".into();
        let client = LiteLlmClient::new(config.clone()).unwrap();
        assert!(!format!("{client:?} {config:?}").contains("good-key"));
    }

    #[test]
    fn key_hash_is_sha256_hex() {
        assert_eq!(hash_key("").len(), 64);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Made by Python's hashlib (tests/fixtures/make_secret_vectors.py).
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/secret_vectors.json"))
                .unwrap();
        let hashes = vectors["litellm_key_hashes"].as_array().unwrap();
        assert!(hashes.len() >= 4);
        for v in hashes {
            assert_eq!(hash_key(v["key"].as_str().unwrap()), v["sha256_hex"]);
        }
    }
}

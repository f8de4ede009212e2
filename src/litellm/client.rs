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

use crate::redact::redact_secrets;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The header the seeds (OpenHands) send the master key in.
pub const DEFAULT_AUTH_HEADER: &str = "x-goog-api-key";

/// The `max_budget` LiteLLM users get once their budget moved to their
/// organization's team: "unlimited" as OpenHands writes it.
pub const UNLIMITED_MAX_BUDGET: f64 = 1_000_000_000.0;

/// Longest piece of a proxy's answer copied into an error message.
const MAX_DETAIL_CHARS: usize = 400;

/// How long a key check (`GET /v1/models` with the member's key) may take.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Page size used when listing a user's keys.
const KEY_LIST_PAGE_SIZE: usize = 100;

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

/// Whose a team is, by the metadata orgkeeper writes on the teams it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamOwner {
    /// No such team.
    Absent,
    /// orgkeeper made it for this organization.
    Ours,
    /// Someone else's team (its metadata, shortened): never adopted, never deleted.
    Foreign(String),
}

/// A budget and what was spent of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberBudget {
    /// The budget in USD; `None` = unlimited.
    pub max_budget: Option<f64>,
    /// What was spent.
    pub spend: f64,
}

/// What `GET /team/info` says about a team.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamInfo {
    /// The team's metadata, as given at creation.
    pub metadata: Value,
    /// The user ids of its members.
    pub members: Vec<String>,
    /// Each member's budget in the team (`max_budget_in_team`) and spend.
    pub budgets: Vec<(String, MemberBudget)>,
    /// The team's own budget and spend.
    pub team_budget: MemberBudget,
}

impl TeamInfo {
    /// Whose the team is: [`TeamOwner::Ours`] when its metadata carries the
    /// same `managed_by` and `org_id` as `ours` (the metadata orgkeeper
    /// writes on its teams).
    pub fn owner(&self, ours: &Value) -> TeamOwner {
        let same = |field: &str| {
            ours.get(field)
                .is_some_and(|v| !v.is_null() && self.metadata.get(field) == Some(v))
        };
        if same("managed_by") && same("org_id") {
            TeamOwner::Ours
        } else {
            TeamOwner::Foreign(redact_secrets(&truncate(&self.metadata.to_string(), 200)))
        }
    }

    /// A member's budget in the team, else the team's own.
    pub fn budget_of(&self, user_id: &str) -> MemberBudget {
        self.budgets
            .iter()
            .find(|(u, _)| u == user_id)
            .map(|(_, b)| *b)
            .unwrap_or(self.team_budget)
    }
}

/// A team to create (`POST /team/new`); `team_id` is the organization's UUID.
#[derive(Debug, Clone)]
pub struct NewTeam<'a> {
    /// Caller-chosen team id (the org id), which makes retries detectable.
    pub team_id: &'a str,
    /// Display name (the org's name); the proxy allows duplicates.
    pub team_alias: &'a str,
    /// Team budget in USD; `None` means unlimited (the field is omitted).
    pub max_budget: Option<f64>,
    /// Models the team may use (empty = all).
    pub models: &'a [String],
    /// Free-form metadata stored on the team.
    pub metadata: Value,
}

/// A user to create (`POST /user/new`); `user_id` is the identity provider's subject.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// The user's id.
    pub user_id: &'a str,
    /// Their email, if known (dropped when another user has it).
    pub email: Option<&'a str>,
    /// Teams to put the user in at creation (the legacy shared team, if any).
    pub teams: &'a [String],
    /// Free-form metadata (OpenHands: `{version, model}`).
    pub metadata: Value,
}

impl<'a> NewUser<'a> {
    /// A user with just an id and an email.
    pub fn plain(user_id: &'a str, email: Option<&'a str>) -> Self {
        NewUser {
            user_id,
            email,
            teams: &[],
            metadata: json!({}),
        }
    }
}

/// A key to create (`POST /key/generate`) with a caller-chosen value.
pub struct NewKey<'a> {
    /// The key itself (`sk-…`, at least 16 characters), chosen and persisted by the caller first.
    pub key: &'a SecretString,
    /// Unique alias (`OpenHands Cloud - user {user_id} - org {org_id}`).
    pub key_alias: &'a str,
    /// Team the key spends from.
    pub team_id: &'a str,
    /// User the key belongs to.
    pub user_id: &'a str,
    /// Models the key may use (empty = the team's).
    pub models: &'a [String],
    /// Free-form metadata stored on the key.
    pub metadata: Value,
}

impl fmt::Debug for NewKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &"[REDACTED]")
            .field("key_alias", &self.key_alias)
            .field("team_id", &self.team_id)
            .field("user_id", &self.user_id)
            .field("models", &self.models)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// What `GET /user/info` says about a user's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserInfo {
    /// The user's own budget; `None` when unset (unlimited).
    pub max_budget: Option<f64>,
    /// What the user has spent so far.
    pub spend: f64,
}

/// One key of a user as `GET /key/list` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The hashed token the proxy identifies the key by (never the key itself).
    pub token: String,
    /// The team the key belongs to, if any.
    pub team_id: Option<String>,
    /// Whether its metadata says orgkeeper made it (`managed_by`).
    pub managed_by_orgkeeper: bool,
}

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

    fn transient(call: &'static str, message: impl AsRef<str>) -> Self {
        LiteLlmError::Transient {
            call,
            message: redact_secrets(message.as_ref()),
        }
    }

    fn permanent(call: &'static str, status: u16, message: impl AsRef<str>) -> Self {
        LiteLlmError::Permanent {
            call,
            status,
            message: redact_secrets(message.as_ref()),
        }
    }
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

/// An HTTP answer: status, parsed JSON (`Null` when the body is not JSON) and raw text.
struct Answer {
    status: StatusCode,
    json: Value,
    text: String,
}

impl Answer {
    fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The error's `type` (error envelope) if any.
    fn error_type(&self) -> Option<&str> {
        self.json.get("error")?.get("type")?.as_str()
    }

    /// The human-readable error message from whichever envelope the proxy used:
    /// `{"error": {"message": …}}`, `{"detail": {"error": …}}`, `{"detail": "…"}`,
    /// `{"detail": [validation errors]}`, or the raw body (e.g. a load balancer's HTML).
    fn message(&self) -> String {
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
    fn describe(&self) -> String {
        match self.error_type() {
            Some(t) => format!("{} ({t})", self.message()),
            None => self.message(),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// SHA-256 hex digest: the token LiteLLM stores for a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Maps a transport-level failure (no usable HTTP answer) to an error.
fn transport_error(call: &'static str, err: reqwest::Error, timeout: Duration) -> LiteLlmError {
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
fn chain(err: &dyn std::error::Error) -> String {
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

    async fn send(&self, call: &'static str, req: RequestBuilder) -> Result<Answer, LiteLlmError> {
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
        tracing::debug!(call, status = status.as_u16(), "litellm answered");
        Ok(answer)
    }

    async fn post(
        &self,
        call: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<Answer, LiteLlmError> {
        self.send(call, self.request(Method::POST, path).json(body))
            .await
    }

    async fn get(
        &self,
        call: &'static str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer, LiteLlmError> {
        self.send(call, self.request(Method::GET, path).query(query))
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
    fn fail(&self, call: &'static str, answer: &Answer) -> LiteLlmError {
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

    /// `POST /team/new`. A 400 "already exists" is confirmed with
    /// `GET /team/info` and reported as [`Created::Existing`].
    pub async fn create_team(&self, team: &NewTeam<'_>) -> Result<Created, LiteLlmError> {
        const CALL: &str = "team/new";
        let mut body = json!({
            "team_id": team.team_id,
            "team_alias": team.team_alias,
            "models": team.models,
            "spend": 0,
            "metadata": team.metadata,
        });
        if let Some(budget) = team.max_budget {
            body["max_budget"] = json!(budget);
        }
        let answer = self.post(CALL, "/team/new", &body).await?;
        if answer.is_success() {
            return Ok(Created::New);
        }
        if answer.status == StatusCode::BAD_REQUEST && answer.message().contains("already exists") {
            return match self.team_owner(team.team_id, &team.metadata).await? {
                TeamOwner::Ours => Ok(Created::Existing),
                TeamOwner::Foreign(metadata) => Err(LiteLlmError::permanent(
                    CALL,
                    400,
                    format!(
                        "LiteLLM team {} already exists and is not this organization's \
                         (its metadata is {metadata}); orgkeeper neither adopts nor deletes a foreign team",
                        team.team_id
                    ),
                )),
                TeamOwner::Absent => Err(LiteLlmError::permanent(
                    CALL,
                    400,
                    format!(
                        "the proxy says team {} already exists but /team/info cannot find it: {}",
                        team.team_id,
                        self.describe(&answer)
                    ),
                )),
            };
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /team/info?team_id=`: whether the team exists and whether it is
    /// the one orgkeeper made for this organization (see [`TeamInfo::owner`]).
    pub async fn team_owner(&self, team_id: &str, ours: &Value) -> Result<TeamOwner, LiteLlmError> {
        Ok(match self.team_info(team_id).await? {
            None => TeamOwner::Absent,
            Some(info) => info.owner(ours),
        })
    }

    /// `GET /team/info?team_id=`: the team's metadata, members and budgets;
    /// `None` when there is no such team.
    pub async fn team_info(&self, team_id: &str) -> Result<Option<TeamInfo>, LiteLlmError> {
        const CALL: &str = "team/info";
        let answer = self
            .get(CALL, "/team/info", &[("team_id", team_id)])
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(self.fail(CALL, &answer));
        }
        let info = &answer.json["team_info"];
        let members = info["members_with_roles"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["user_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let budgets = answer.json["team_memberships"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| {
                        Some((
                            m["user_id"].as_str()?.to_owned(),
                            MemberBudget {
                                max_budget: m["litellm_budget_table"]["max_budget"].as_f64(),
                                spend: m["spend"].as_f64().unwrap_or(0.0),
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(TeamInfo {
            metadata: info["metadata"].clone(),
            members,
            budgets,
            team_budget: MemberBudget {
                max_budget: info["max_budget"].as_f64(),
                spend: info["spend"].as_f64().unwrap_or(0.0),
            },
        }))
    }

    /// `POST /user/new` as OpenHands sends it (`models: []`, no key, no
    /// invitation email). A 409 for the id means [`Created::Existing`]; a 409
    /// for the email (taken by another user, case-insensitively) retries
    /// once without the email.
    pub async fn create_user(&self, user: &NewUser<'_>) -> Result<Created, LiteLlmError> {
        const CALL: &str = "user/new";
        let user_id = user.user_id;
        let mut email = user.email.filter(|e| !e.trim().is_empty());
        loop {
            let mut body = json!({
                "user_id": user_id,
                "models": [],
                "teams": user.teams,
                "auto_create_key": false,
                "send_invite_email": false,
                "metadata": user.metadata,
            });
            if let Some(e) = email {
                body["user_email"] = json!(e);
            }
            let answer = self.post(CALL, "/user/new", &body).await?;
            if answer.is_success() {
                return Ok(Created::New);
            }
            if answer.status == StatusCode::CONFLICT {
                let message = answer.message();
                let lower = message.to_ascii_lowercase();
                if lower.contains("with id") {
                    return Ok(Created::Existing);
                }
                if email.is_some() && lower.contains("email") {
                    tracing::info!(
                        user_id,
                        "LiteLLM already has a user with this email; creating the user without it"
                    );
                    email = None;
                    continue;
                }
            }
            return Err(self.fail(CALL, &answer));
        }
    }

    /// `POST /team/member_add` with role `user`. A 400 of type
    /// `team_member_already_in_team` means [`Created::Existing`].
    pub async fn add_team_member(
        &self,
        team_id: &str,
        user_id: &str,
        max_budget_in_team: Option<f64>,
    ) -> Result<Created, LiteLlmError> {
        const CALL: &str = "team/member_add";
        let mut body = json!({
            "team_id": team_id,
            "member": {"user_id": user_id, "role": "user"},
        });
        if let Some(budget) = max_budget_in_team {
            body["max_budget_in_team"] = json!(budget);
        }
        let answer = self.post(CALL, "/team/member_add", &body).await?;
        if answer.is_success() {
            return Ok(Created::New);
        }
        if answer.status == StatusCode::BAD_REQUEST
            && (answer.error_type() == Some("team_member_already_in_team")
                || answer.message().contains("already in team"))
        {
            return Ok(Created::Existing);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/member_delete`. A member (or team) that is not there means
    /// [`Deleted::AlreadyGone`].
    pub async fn remove_team_member(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<Deleted, LiteLlmError> {
        const CALL: &str = "team/member_delete";
        let body = json!({"team_id": team_id, "user_id": user_id});
        let answer = self.post(CALL, "/team/member_delete", &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        if answer.status == StatusCode::BAD_REQUEST {
            let m = answer.message().to_ascii_lowercase();
            if m.contains("not found in team")
                || m.contains("not in team")
                || m.contains("does not exist")
                || m.contains("not found")
            {
                return Ok(Deleted::AlreadyGone);
            }
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /key/info`: whether the key is in the proxy's database. Asks by
    /// the key's SHA-256 token, so the key never travels in a URL.
    pub async fn key_exists(&self, key: &SecretString) -> Result<bool, LiteLlmError> {
        self.token_exists(&hash_key(key.expose_secret())).await
    }

    /// `GET /key/info` by the key's token: `None` when the proxy does not have
    /// the key, else `Some(team)` with the team it spends from.
    pub async fn key_team(
        &self,
        key: &SecretString,
    ) -> Result<Option<Option<String>>, LiteLlmError> {
        const CALL: &str = "key/info";
        let token = hash_key(key.expose_secret());
        let answer = self.get(CALL, "/key/info", &[("key", &token)]).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(self.fail(CALL, &answer));
        }
        Ok(Some(
            answer.json["info"]["team_id"].as_str().map(str::to_owned),
        ))
    }

    /// `GET /key/info?key=<token>` for a hashed token (as `/key/list` returns).
    pub async fn token_exists(&self, token: &str) -> Result<bool, LiteLlmError> {
        const CALL: &str = "key/info";
        let answer = self.get(CALL, "/key/info", &[("key", token)]).await?;
        if answer.is_success() {
            return Ok(true);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /key/generate` with the caller's key value. [`Created::New`] is a
    /// 200 — which writes nothing when the key value already existed, so it is
    /// trustworthy only for a freshly chosen random key; [`Created::Existing`]
    /// is a 400 "alias already exists", which may be an earlier attempt's
    /// success or another key's alias. Confirm with
    /// [`key_exists`](Self::key_exists), or use [`ensure_key`](Self::ensure_key).
    pub async fn generate_key(&self, key: &NewKey<'_>) -> Result<Created, LiteLlmError> {
        const CALL: &str = "key/generate";
        let value = key.key.expose_secret();
        if !value.starts_with("sk-") || value.chars().count() < 16 {
            // Checked here so that the proxy cannot echo a malformed key into an error.
            return Err(LiteLlmError::permanent(
                CALL,
                0,
                format!(
                    "the key for alias {:?} must start with \"sk-\" and be at least 16 characters long",
                    key.key_alias
                ),
            ));
        }
        let body = json!({
            "key": key.key.expose_secret(),
            "key_alias": key.key_alias,
            "team_id": key.team_id,
            "user_id": key.user_id,
            "models": key.models,
            "metadata": key.metadata,
        });
        let answer = self.post(CALL, "/key/generate", &body).await?;
        if answer.is_success() {
            return Ok(Created::New);
        }
        if is_alias_taken(&answer) {
            return Ok(Created::Existing);
        }
        Err(self.fail(CALL, &answer))
    }

    /// The robust key sequence: `/key/info` first (a retry finds the key and
    /// returns [`Created::Existing`]), then `/key/generate`, then `/key/info`
    /// again to confirm that the proxy really wrote it. Fails permanently when
    /// the alias belongs to another key or the proxy answered 200 without
    /// writing anything.
    pub async fn ensure_key(&self, key: &NewKey<'_>) -> Result<Created, LiteLlmError> {
        const CALL: &str = "key/generate";
        let token = hash_key(key.key.expose_secret());
        if self.token_exists(&token).await? {
            return Ok(Created::Existing);
        }
        self.generate_key(key).await?;
        if self.token_exists(&token).await? {
            return Ok(Created::New);
        }
        Err(LiteLlmError::permanent(
            CALL,
            400,
            format!(
                "the proxy did not store the key with alias {:?} (the alias may belong to another key)",
                key.key_alias
            ),
        ))
    }

    /// `POST /key/delete` by alias (the aliases orgkeeper gives are unique
    /// per member and organization). A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_key_by_alias(&self, alias: &str) -> Result<Deleted, LiteLlmError> {
        self.delete_keys(json!({ "key_aliases": [alias] })).await
    }

    /// `POST /key/delete` of one key, sent as its SHA-256 token so the key
    /// itself never travels again. A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_key(&self, key: &SecretString) -> Result<Deleted, LiteLlmError> {
        self.delete_key_by_token(&hash_key(key.expose_secret()))
            .await
    }

    /// `POST /key/delete` of one key by its hashed token (as `/key/list`
    /// returns it). A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_key_by_token(&self, token: &str) -> Result<Deleted, LiteLlmError> {
        self.delete_keys(json!({ "keys": [token] })).await
    }

    async fn delete_keys(&self, body: Value) -> Result<Deleted, LiteLlmError> {
        const CALL: &str = "key/delete";
        let answer = self.post(CALL, "/key/delete", &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /v1/models` with `Authorization: Bearer <key>` (and no master
    /// key), as an application calling the LLM would: `Some(false)` only for
    /// 401/403 (the proxy refuses the key), `Some(true)` for a 2xx, `None`
    /// when the answer says nothing about the key (other errors, time-outs).
    pub async fn key_valid(&self, key: &SecretString) -> Option<bool> {
        let answer = self
            .probe
            .get(format!("{}/v1/models", self.base_url))
            .bearer_auth(key.expose_secret())
            .send()
            .await;
        match answer.map(|a| a.status()) {
            Ok(s) if s.is_success() => Some(true),
            Ok(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Some(false),
            Ok(status) => {
                tracing::debug!(status = status.as_u16(), "key check inconclusive");
                None
            }
            Err(e) => {
                tracing::debug!(error = %chain(&e), "key check inconclusive");
                None
            }
        }
    }

    /// `POST /team/update {team_id, max_budget}`: the team's budget (a
    /// top-up); `None` = unlimited.
    pub async fn update_team_budget(
        &self,
        team_id: &str,
        max_budget: Option<f64>,
    ) -> Result<(), LiteLlmError> {
        const CALL: &str = "team/update";
        let body = json!({ "team_id": team_id, "max_budget": max_budget });
        let answer = self.post(CALL, "/team/update", &body).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/member_update {team_id, user_id, max_budget_in_team}`.
    /// A user who is no longer in the team means [`Deleted::AlreadyGone`].
    pub async fn update_member_budget(
        &self,
        team_id: &str,
        user_id: &str,
        max_budget_in_team: Option<f64>,
    ) -> Result<Deleted, LiteLlmError> {
        const CALL: &str = "team/member_update";
        let body = json!({
            "team_id": team_id,
            "user_id": user_id,
            "max_budget_in_team": max_budget_in_team,
        });
        let answer = self.post(CALL, "/team/member_update", &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::BAD_REQUEST
            && answer
                .message()
                .to_ascii_lowercase()
                .contains("not in team")
        {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /key/update {key, key_alias}`: renames a key (by hashed token).
    /// A key that is gone means [`Deleted::AlreadyGone`] (nothing to rename).
    pub async fn rename_key(&self, token: &str, alias: &str) -> Result<Deleted, LiteLlmError> {
        const CALL: &str = "key/update";
        let body = json!({ "key": token, "key_alias": alias });
        let answer = self.post(CALL, "/key/update", &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/delete`; the proxy also deletes the team's keys and
    /// memberships. A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_team(&self, team_id: &str) -> Result<Deleted, LiteLlmError> {
        const CALL: &str = "team/delete";
        let answer = self
            .post(CALL, "/team/delete", &json!({"team_ids": [team_id]}))
            .await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /user/info?user_id=`: the user's budget and spend, `None` for an unknown user.
    pub async fn user_info(&self, user_id: &str) -> Result<Option<UserInfo>, LiteLlmError> {
        const CALL: &str = "user/info";
        let answer = self
            .get(CALL, "/user/info", &[("user_id", user_id)])
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(self.fail(CALL, &answer));
        }
        parse_user_info(&answer.json).map_err(|problem| {
            LiteLlmError::permanent(
                CALL,
                answer.status.as_u16(),
                format!("unexpected answer: {problem}"),
            )
        })
    }

    /// `POST /user/update` setting the user's own `max_budget` (the proxy
    /// creates the user if it does not exist).
    pub async fn update_user_max_budget(
        &self,
        user_id: &str,
        max_budget: f64,
    ) -> Result<(), LiteLlmError> {
        self.update_user(json!({"user_id": user_id, "max_budget": max_budget}))
            .await
    }

    /// `POST /user/update {user_id, max_budget, spend}`: gives a user back a
    /// budget and what they spent of it (migration rollback).
    pub async fn restore_user_budget(
        &self,
        user_id: &str,
        budget: MemberBudget,
    ) -> Result<(), LiteLlmError> {
        self.update_user(json!({
            "user_id": user_id,
            "max_budget": budget.max_budget.unwrap_or(UNLIMITED_MAX_BUDGET),
            "spend": budget.spend,
        }))
        .await
    }

    async fn update_user(&self, body: Value) -> Result<(), LiteLlmError> {
        const CALL: &str = "user/update";
        let answer = self.post(CALL, "/user/update", &body).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /key/list?user_id=` (all pages): the user's keys as hashed tokens with their team.
    pub async fn list_user_keys(&self, user_id: &str) -> Result<Vec<ListedKey>, LiteLlmError> {
        const CALL: &str = "key/list";
        let size = KEY_LIST_PAGE_SIZE.to_string();
        let mut keys = Vec::new();
        let mut page = 1usize;
        loop {
            let page_text = page.to_string();
            let answer = self
                .get(
                    CALL,
                    "/key/list",
                    &[
                        ("user_id", user_id),
                        ("return_full_object", "true"),
                        ("page", &page_text),
                        ("size", &size),
                    ],
                )
                .await?;
            if !answer.is_success() {
                return Err(self.fail(CALL, &answer));
            }
            let Some(entries) = answer.json.get("keys").and_then(Value::as_array) else {
                return Err(self.fail(CALL, &answer));
            };
            for entry in entries {
                let listed = match entry {
                    Value::String(token) => ListedKey {
                        token: token.clone(),
                        team_id: None,
                        managed_by_orgkeeper: false,
                    },
                    Value::Object(o) => {
                        let Some(token) = o.get("token").and_then(Value::as_str) else {
                            return Err(LiteLlmError::permanent(
                                CALL,
                                answer.status.as_u16(),
                                "unexpected answer: a listed key has no token",
                            ));
                        };
                        ListedKey {
                            token: token.to_owned(),
                            team_id: o.get("team_id").and_then(Value::as_str).map(str::to_owned),
                            managed_by_orgkeeper: o
                                .get("metadata")
                                .and_then(|m| m.get("managed_by"))
                                .and_then(Value::as_str)
                                == Some("orgkeeper"),
                        }
                    }
                    _ => {
                        return Err(LiteLlmError::permanent(
                            CALL,
                            answer.status.as_u16(),
                            "unexpected answer: a listed key is neither a token nor an object",
                        ))
                    }
                };
                keys.push(listed);
            }
            let total_pages = answer
                .json
                .get("total_pages")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize;
            if entries.is_empty() || page >= total_pages {
                return Ok(keys);
            }
            page += 1;
        }
    }

    /// `POST /key/update {key, team_id}`: moves a key (by hashed token) into a
    /// team, or out of any team with `None`.
    pub async fn move_key_to_team(
        &self,
        token: &str,
        team_id: Option<&str>,
    ) -> Result<(), LiteLlmError> {
        const CALL: &str = "key/update";
        let mut body = Map::new();
        body.insert("key".into(), json!(token));
        body.insert("team_id".into(), json!(team_id));
        let answer = self.post(CALL, "/key/update", &Value::Object(body)).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(self.fail(CALL, &answer))
    }
}

/// Reads `user_info.max_budget` and `user_info.spend` from a `/user/info`
/// answer; `None` when the proxy has no user row.
fn parse_user_info(json: &Value) -> Result<Option<UserInfo>, String> {
    let info = match json.get("user_info") {
        // Older proxies answer an unknown user with a stub ({"spend": 0}) and no user row.
        Some(Value::Object(o)) if !o.contains_key("user_id") => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(Value::Null) => return Ok(None),
        _ => return Err("no user_info object".to_owned()),
    };
    let number = |field: &str| -> Result<Option<f64>, String> {
        match info.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("user_info.{field} is not a number")),
        }
    };
    Ok(Some(UserInfo {
        max_budget: number("max_budget")?,
        spend: number("spend")?.unwrap_or(0.0),
    }))
}

/// A `/key/generate` 400 saying the alias is already used.
fn is_alias_taken(answer: &Answer) -> bool {
    answer.status == StatusCode::BAD_REQUEST && {
        let m = answer.message();
        m.contains("alias") && m.contains("already exists")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn user_info_reads_budget_and_spend_and_knows_unknown_users() {
        let parse = |s: &str| parse_user_info(&serde_json::from_str(s).unwrap());
        assert_eq!(
            parse(r#"{"user_info":{"user_id":"u","max_budget":25.5,"spend":3}}"#),
            Ok(Some(UserInfo {
                max_budget: Some(25.5),
                spend: 3.0
            }))
        );
        assert_eq!(
            parse(r#"{"user_info":{"user_id":"u","max_budget":null,"spend":null}}"#),
            Ok(Some(UserInfo {
                max_budget: None,
                spend: 0.0
            }))
        );
        // Older proxies: a stub for an unknown user, or null.
        assert_eq!(
            parse(r#"{"user_id":"u","user_info":{"spend":0.0},"keys":[]}"#),
            Ok(None)
        );
        assert_eq!(parse(r#"{"user_info":null}"#), Ok(None));
        assert!(parse(r#"{"user_info":{"user_id":"u","spend":"lots"}}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }

    #[test]
    fn statuses_are_classified_first() {
        let client = LiteLlmClient::new(LiteLlmConfig::new(
            "http://127.0.0.1:1",
            SecretString::from("sk-test-master-key-123456"),
        ))
        .unwrap();
        let e = client.fail(
            "x",
            &answer(
                400,
                r#"{"error":{"message":"bad","type":"internal_server_error","code":"400"}}"#,
            ),
        );
        assert!(!e.is_transient());
        assert!(client.fail("x", &answer(503, "")).is_transient());
        assert!(client.fail("x", &answer(429, "")).is_transient());
        let e = client.fail(
            "x",
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
            serde_json::from_str(include_str!("../../tests/fixtures/secret_vectors.json")).unwrap();
        let hashes = vectors["litellm_key_hashes"].as_array().unwrap();
        assert!(hashes.len() >= 4);
        for v in hashes {
            assert_eq!(hash_key(v["key"].as_str().unwrap()), v["sha256_hex"]);
        }
    }
}

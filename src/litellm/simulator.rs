//! An in-memory LiteLLM admin API, faithful to the real proxy's behaviour
//! and quirks as `shared/spec/litellm.md` records them (error envelopes,
//! "already exists" answers, the key-generation trap, cascading team
//! deletion), plus fault injection for testing retries. It also answers
//! `GET /v1/models` for virtual keys (the daemon's "does this key still
//! work" check), keeps every request's body for tests ([`LiteLlmSimulator::requests`]),
//! and can answer every request with a redirect (`--redirect-to`).
//!
//! Tests and `orgkeeper dev` run it in-process ([`LiteLlmSimulator::start_local`]);
//! `orgkeeper simulate litellm` runs it standalone ([`serve_forever`]).
//! It listens on 127.0.0.1 only. Handlers take one `std` mutex briefly and
//! never hold it across an `await`; simulated latency is a `tokio` sleep.

use crate::litellm::client::hash_key;
use crate::simkit::{self, parse_fraction, ConnHandle, Roll, SimServer};
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::RngExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use crate::simkit::{parse_latency, Faults};

/// The master key the simulator accepts unless told otherwise.
pub const DEFAULT_MASTER_KEY: &str = "sk-orgkeeper-dev-master-key";

/// The user id the real proxy gives the master-key caller; `/team/new` adds it
/// to every team as an admin.
pub const CALLER_ADMIN_USER_ID: &str = "default_user_id";

/// The endpoints the simulator serves, as named in `--fail` and in [`SimStats`].
pub const ENDPOINTS: [&str; 16] = [
    "team/new",
    "team/info",
    "team/update",
    "team/delete",
    "team/member_add",
    "team/member_update",
    "team/member_delete",
    "user/new",
    "user/info",
    "user/update",
    "key/generate",
    "key/info",
    "key/list",
    "key/update",
    "key/delete",
    "v1/models",
];

/// The models the simulator serves unless told otherwise (`--models`).
pub const DEFAULT_MODELS: [&str; 1] = ["claude-sonnet-4-20250514"];

/// How many request bodies the simulator keeps per endpoint (the oldest go
/// first), so that a long `orgkeeper dev` session or a benchmark stays bounded.
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

const NOT_PREMIUM: &str = "Assigning team admins is a premium feature. You must be a LiteLLM Enterprise user to use this feature. If you have a license please set `LITELLM_LICENSE` in your env. Get a 7 day trial key here: https://www.litellm.ai/#trial. Pricing: https://www.litellm.ai/#pricing";

const BAD_GATEWAY_HTML: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

const UNAVAILABLE_HTML: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Command-line settings of the simulator (`orgkeeper simulate litellm`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// TCP port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 4000)]
    pub port: u16,
    /// The master key clients must present.
    #[arg(
        long,
        env = "LITELLM_MASTER_KEY",
        hide_env_values = true,
        default_value = DEFAULT_MASTER_KEY,
        value_parser = parse_secret
    )]
    pub master_key: SecretString,
    /// Fraction (0..1) of requests answered with a 5xx without acting.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Latency added to every request, in milliseconds: `N` or `MIN..MAX`.
    #[arg(long, default_value = "0", value_parser = parse_latency)]
    pub latency_ms: (u64, u64),
    /// Every mutating call's first successful attempt for a given resource
    /// performs the action, then answers 502 (a lost answer).
    #[arg(long)]
    pub perform_then_502: bool,
    /// Fraction (0..1) of requests whose connection is closed without an answer (and without acting).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_rate: f64,
    /// `ENDPOINT=STATUS`, e.g. `key/generate=400`: that endpoint always fails
    /// with that status, without acting. Repeatable.
    #[arg(long = "fail", value_name = "ENDPOINT=STATUS", value_parser = parse_fail)]
    pub fail: Vec<(String, u16)>,
    /// Answer every request with `307 Temporary Redirect` to this base URL
    /// (`Location: <URL><the request's path and query>`), without acting.
    #[arg(long, value_name = "URL", value_parser = parse_redirect)]
    pub redirect_to: Option<String>,
    /// The models the proxy serves, as `GET /v1/models` lists them
    /// (comma-separated or repeated).
    #[arg(
        long,
        value_name = "MODEL",
        value_delimiter = ',',
        default_values_t = DEFAULT_MODELS.map(String::from)
    )]
    pub models: Vec<String>,
}

impl Default for SimulatorArgs {
    /// The command line's defaults: port 4000, the development master key, no faults.
    fn default() -> Self {
        Self {
            port: 4000,
            master_key: SecretString::from(DEFAULT_MASTER_KEY),
            error_rate: 0.0,
            latency_ms: (0, 0),
            perform_then_502: false,
            drop_rate: 0.0,
            fail: Vec::new(),
            redirect_to: None,
            models: DEFAULT_MODELS.map(String::from).to_vec(),
        }
    }
}

impl SimulatorArgs {
    /// The faults these arguments ask for.
    pub fn faults(&self) -> Faults {
        Faults {
            error_rate: self.error_rate,
            latency_ms: self.latency_ms,
            perform_then_502: self.perform_then_502,
            drop_rate: self.drop_rate,
            fail: self.fail.clone(),
        }
    }
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        return Err("the master key must not be empty".into());
    }
    Ok(SecretString::from(s.trim()))
}

/// Parses `--redirect-to`: an `http://` or `https://` URL without a query,
/// returned without a trailing `/`.
pub fn parse_redirect(s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s:?} must not have a query or fragment (the request's own path and query are appended)"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Parses `ENDPOINT=STATUS` (`key/generate=400`; a leading `/` is allowed).
pub fn parse_fail(s: &str) -> Result<(String, u16), String> {
    simkit::parse_fail(s.trim_start().trim_start_matches('/'), &ENDPOINTS)
}

// ---------------------------------------------------------------------------
// Views for tests
// ---------------------------------------------------------------------------

/// Counts of what the simulator holds, and of the requests it answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// Teams.
    pub teams: usize,
    /// Users (the master-key caller is not one).
    pub users: usize,
    /// Team memberships, not counting the caller admin `/team/new` adds.
    pub memberships: usize,
    /// Keys.
    pub keys: usize,
    /// Requests per endpoint (`team/new`, …, `other`) and answer status;
    /// status 0 counts connections closed without an answer.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
}

impl SimStats {
    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().flat_map(|m| m.values()).sum()
    }

    /// Requests received by one endpoint (`key/generate`), whatever the answer.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.requests
            .get(endpoint.trim_start_matches('/'))
            .map_or(0, |m| m.values().sum())
    }

    /// Requests answered with `status`, all endpoints together (0 = dropped).
    pub fn status_count(&self, status: u16) -> u64 {
        self.requests.values().filter_map(|m| m.get(&status)).sum()
    }

    /// Requests to `endpoint` answered with a 2xx.
    pub fn succeeded(&self, endpoint: &str) -> u64 {
        self.requests
            .get(endpoint.trim_start_matches('/'))
            .map_or(0, |m| {
                m.iter()
                    .filter(|(s, _)| (200..300).contains(*s))
                    .map(|(_, n)| n)
                    .sum()
            })
    }

    /// Requests to `endpoint` answered with `status`.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint.trim_start_matches('/'))
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }
}

/// A team member as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamMemberView {
    /// The member's user id.
    pub user_id: String,
    /// `user` or `admin`.
    pub role: String,
    /// The member's budget within the team, if one was set.
    pub max_budget_in_team: Option<f64>,
}

/// A key as a test sees it (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView {
    /// SHA-256 token of the key.
    pub token: String,
    /// The key's alias.
    pub alias: Option<String>,
    /// The key's user.
    pub user_id: Option<String>,
    /// The key's team.
    pub team_id: Option<String>,
    /// Models the key may use.
    pub models: Vec<String>,
    /// The key's metadata.
    pub metadata: Value,
}

/// A team as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamView {
    /// Team id.
    pub team_id: String,
    /// Team alias.
    pub team_alias: Option<String>,
    /// Team budget (`None` = unlimited).
    pub max_budget: Option<f64>,
    /// Models the team may use.
    pub models: Vec<String>,
    /// Team metadata.
    pub metadata: Value,
    /// Members, without the caller admin `/team/new` adds.
    pub members: Vec<TeamMemberView>,
    /// Whether the master-key caller (`default_user_id`) is an admin of the team.
    pub caller_admin: bool,
    /// Keys whose `team_id` is this team.
    pub keys: Vec<KeyView>,
}

/// A user as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    /// User id.
    pub user_id: String,
    /// Email, as stored.
    pub email: Option<String>,
    /// The user's own budget (`None` = unlimited).
    pub max_budget: Option<f64>,
    /// What the user spent.
    pub spend: f64,
    /// Team ids in the user's team list.
    pub teams: Vec<String>,
    /// Number of keys whose `user_id` is this user.
    pub keys: usize,
}

// ---------------------------------------------------------------------------
// The database
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Member {
    user_id: Option<String>,
    user_email: Option<String>,
    role: String,
}

#[derive(Debug, Clone)]
struct Team {
    team_id: String,
    team_alias: Option<String>,
    max_budget: Option<f64>,
    models: Vec<String>,
    metadata: Value,
    members: Vec<Member>,
    /// user id → budget within the team (LiteLLM's team memberships).
    budgets: HashMap<String, f64>,
    spend: f64,
}

#[derive(Debug, Clone)]
struct User {
    user_id: String,
    user_email: Option<String>,
    max_budget: Option<f64>,
    spend: f64,
    teams: Vec<String>,
    user_role: String,
    metadata: Value,
    models: Vec<String>,
}

#[derive(Debug, Clone)]
struct Key {
    seq: u64,
    token: String,
    key_name: String,
    key_alias: Option<String>,
    team_id: Option<String>,
    user_id: Option<String>,
    models: Vec<String>,
    metadata: Value,
    spend: f64,
    max_budget: Option<f64>,
}

#[derive(Debug, Default)]
struct Db {
    teams: HashMap<String, Team>,
    users: HashMap<String, User>,
    /// lower-cased email → number of users with it (`/user/update` allows duplicates).
    emails: HashMap<String, usize>,
    keys: HashMap<String, Key>,
    aliases: HashMap<String, String>,
    keys_by_user: HashMap<String, HashSet<String>>,
    keys_by_team: HashMap<String, HashSet<String>>,
    /// Resources whose first successful mutation was answered with a 502.
    performed: HashSet<String>,
    next_seq: u64,
    /// What `GET /v1/models` lists for a key without a model restriction.
    served_models: Vec<String>,
}

/// What a handler answers.
enum Reply {
    Json(u16, Value),
    Html(u16, &'static str),
}

impl Reply {
    fn status(&self) -> u16 {
        match self {
            Reply::Json(s, _) | Reply::Html(s, _) => *s,
        }
    }
}

type Outcome = Result<Reply, Reply>;

fn ok(body: Value) -> Outcome {
    Ok(Reply::Json(200, body))
}

/// The proxy's `ProxyException` envelope: `code` is a string.
fn proxy_error(status: u16, message: impl Into<String>, kind: &str, param: &str) -> Reply {
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
fn wrapped_error(status: u16, detail_error: &str) -> Reply {
    proxy_error(
        status,
        format!("{{'error': '{detail_error}'}}"),
        "internal_server_error",
        "None",
    )
}

/// An `HTTPException(detail={"error": …})` that reached FastAPI unconverted.
fn detail_error(status: u16, message: impl Into<String>) -> Reply {
    Reply::Json(status, json!({"detail": {"error": message.into()}}))
}

/// FastAPI's request-validation answer.
fn validation_error(field: &str, msg: &str) -> Reply {
    Reply::Json(
        422,
        json!({"detail": [{"type": "value_error", "loc": ["body", field], "msg": msg, "input": null}]}),
    )
}

fn abbreviate(key: &str) -> String {
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

fn token_of(key_or_token: &str) -> String {
    if key_or_token.starts_with("sk-") {
        hash_key(key_or_token)
    } else {
        key_or_token.to_owned()
    }
}

fn random_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let tail: String = (0..22)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("sk-{tail}")
}

fn str_field<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    body.get(field).and_then(Value::as_str)
}

fn opt_f64(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, Reply> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| validation_error(field, "Input should be a valid number")),
    }
}

fn string_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, Reply> {
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

fn object_field(body: &Map<String, Value>, field: &str) -> Result<Value, Reply> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(validation_error(
            field,
            "Input should be a valid dictionary",
        )),
    }
}

impl Db {
    fn team_json(&self, t: &Team) -> Value {
        json!({
            "team_id": t.team_id,
            "team_alias": t.team_alias,
            "organization_id": null,
            "admins": [],
            "members": [],
            "members_with_roles": t.members.iter().map(|m| json!({
                "user_id": m.user_id, "user_email": m.user_email, "role": m.role,
            })).collect::<Vec<_>>(),
            "metadata": t.metadata,
            "tpm_limit": null,
            "rpm_limit": null,
            "max_budget": t.max_budget,
            "budget_duration": null,
            "models": t.models,
            "blocked": false,
            "spend": t.spend,
            "max_parallel_requests": null,
            "budget_reset_at": null,
            "model_id": null,
        })
    }

    fn user_json(u: &User) -> Value {
        json!({
            "user_id": u.user_id,
            "user_email": u.user_email,
            "user_alias": null,
            "user_role": u.user_role,
            "max_budget": u.max_budget,
            "spend": u.spend,
            "teams": u.teams,
            "models": u.models,
            "metadata": u.metadata,
            "tpm_limit": null,
            "rpm_limit": null,
            "budget_duration": null,
            "budget_reset_at": null,
        })
    }

    fn key_json(k: &Key, with_token: bool) -> Value {
        let mut v = json!({
            "key_name": k.key_name,
            "key_alias": k.key_alias,
            "spend": k.spend,
            "max_budget": k.max_budget,
            "expires": null,
            "models": k.models,
            "aliases": {},
            "config": {},
            "user_id": k.user_id,
            "team_id": k.team_id,
            "permissions": {},
            "max_parallel_requests": null,
            "metadata": k.metadata,
            "blocked": null,
            "tpm_limit": null,
            "rpm_limit": null,
        });
        if with_token {
            v["token"] = json!(k.token);
        }
        v
    }

    fn add_email(&mut self, email: &Option<String>) {
        if let Some(e) = email {
            *self.emails.entry(e.to_lowercase()).or_default() += 1;
        }
    }

    fn remove_email(&mut self, email: &Option<String>) {
        if let Some(e) = email {
            let lower = e.to_lowercase();
            if let Some(n) = self.emails.get_mut(&lower) {
                *n -= 1;
                if *n == 0 {
                    self.emails.remove(&lower);
                }
            }
        }
    }

    fn email_owner(&self, email: &str) -> Option<&User> {
        let lower = email.trim().to_lowercase();
        if !self.emails.contains_key(&lower) {
            return None;
        }
        self.users.values().find(|u| {
            u.user_email
                .as_deref()
                .is_some_and(|e| e.to_lowercase() == lower)
        })
    }

    fn new_user(user_id: &str, email: Option<String>) -> User {
        User {
            user_id: user_id.to_owned(),
            user_email: email,
            max_budget: None,
            spend: 0.0,
            teams: Vec::new(),
            user_role: "internal_user".into(),
            metadata: json!({}),
            models: Vec::new(),
        }
    }

    fn insert_user(&mut self, user: User) {
        self.add_email(&user.user_email);
        if let Some(old) = self.users.insert(user.user_id.clone(), user) {
            self.remove_email(&old.user_email);
        }
    }

    fn insert_key(&mut self, mut key: Key) {
        self.next_seq += 1;
        key.seq = self.next_seq;
        if let Some(alias) = &key.key_alias {
            self.aliases.insert(alias.clone(), key.token.clone());
        }
        if let Some(u) = &key.user_id {
            self.keys_by_user
                .entry(u.clone())
                .or_default()
                .insert(key.token.clone());
        }
        if let Some(t) = &key.team_id {
            self.keys_by_team
                .entry(t.clone())
                .or_default()
                .insert(key.token.clone());
        }
        self.keys.insert(key.token.clone(), key);
    }

    fn remove_key(&mut self, token: &str) -> Option<Key> {
        let key = self.keys.remove(token)?;
        if let Some(alias) = &key.key_alias {
            if self.aliases.get(alias).is_some_and(|t| t == token) {
                self.aliases.remove(alias);
            }
        }
        if let Some(u) = &key.user_id {
            if let Some(set) = self.keys_by_user.get_mut(u) {
                set.remove(token);
                if set.is_empty() {
                    self.keys_by_user.remove(u);
                }
            }
        }
        if let Some(t) = &key.team_id {
            if let Some(set) = self.keys_by_team.get_mut(t) {
                set.remove(token);
                if set.is_empty() {
                    self.keys_by_team.remove(t);
                }
            }
        }
        Some(key)
    }

    fn keys_sorted<'a>(&'a self, tokens: impl Iterator<Item = &'a String>) -> Vec<&'a Key> {
        let mut keys: Vec<&Key> = tokens.filter_map(|t| self.keys.get(t)).collect();
        keys.sort_by_key(|k| k.seq);
        keys
    }

    fn memberships(&self) -> usize {
        self.teams
            .values()
            .map(|t| {
                t.members
                    .iter()
                    .filter(|m| m.user_id.as_deref() != Some(CALLER_ADMIN_USER_ID))
                    .count()
            })
            .sum()
    }

    // -- endpoints ----------------------------------------------------------

    /// `POST /team/new`.
    fn team_new(&mut self, body: &Map<String, Value>) -> Outcome {
        let team_id = match body.get("team_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(validation_error(
                    "team_id",
                    "Input should be a valid string",
                ))
            }
        };
        if self.teams.contains_key(&team_id) {
            return Err(wrapped_error(
                400,
                &format!("Team id = {team_id} already exists. Please use a different team id."),
            ));
        }
        let mut members = Vec::new();
        if let Some(Value::Array(given)) = body.get("members_with_roles") {
            for m in given {
                let user_id = m.get("user_id").and_then(Value::as_str).map(str::to_owned);
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                if !matches!(role, "user" | "admin") {
                    return Err(validation_error(
                        "members_with_roles",
                        "role must be 'admin' or 'user'",
                    ));
                }
                members.push(Member {
                    user_id,
                    user_email: m
                        .get("user_email")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    role: role.to_owned(),
                });
            }
        }
        if !members
            .iter()
            .any(|m| m.user_id.as_deref() == Some(CALLER_ADMIN_USER_ID))
        {
            members.push(Member {
                user_id: Some(CALLER_ADMIN_USER_ID.into()),
                user_email: None,
                role: "admin".into(),
            });
        }
        let team = Team {
            team_id: team_id.clone(),
            team_alias: str_field(body, "team_alias").map(str::to_owned),
            max_budget: opt_f64(body, "max_budget")?,
            models: string_list(body, "models")?,
            metadata: object_field(body, "metadata")?,
            members,
            budgets: HashMap::new(),
            spend: 0.0,
        };
        // The proxy pushes the team onto every listed member's user row (upsert).
        for m in &team.members {
            let Some(uid) = m.user_id.as_deref() else {
                continue;
            };
            if uid == CALLER_ADMIN_USER_ID {
                continue;
            }
            if !self.users.contains_key(uid) {
                self.insert_user(Self::new_user(uid, None));
            }
            if let Some(u) = self.users.get_mut(uid) {
                if !u.teams.contains(&team_id) {
                    u.teams.push(team_id.clone());
                }
            }
        }
        let out = self.team_json(&team);
        self.teams.insert(team_id, team);
        ok(out)
    }

    /// `GET /team/info?team_id=`.
    fn team_info(&self, team_id: Option<&str>) -> Outcome {
        let Some(team_id) = team_id else {
            return Err(wrapped_error(400, "No team id passed in."));
        };
        let Some(team) = self.teams.get(team_id) else {
            return Err(proxy_error(
                404,
                format!("{{'message': 'Team not found, passed team id: {team_id}.'}}"),
                "internal_server_error",
                "None",
            ));
        };
        let keys: Vec<Value> = self
            .keys_by_team
            .get(team_id)
            .map(|set| {
                self.keys_sorted(set.iter())
                    .into_iter()
                    .map(|k| Self::key_json(k, true))
                    .collect()
            })
            .unwrap_or_default();
        let memberships: Vec<Value> = team
            .budgets
            .iter()
            .map(|(uid, budget)| {
                json!({
                    "team_id": team.team_id, "user_id": uid, "spend": 0.0,
                    "budget_id": format!("budget-{}-{uid}", team.team_id),
                    "litellm_budget_table": {"max_budget": budget},
                })
            })
            .collect();
        ok(json!({
            "team_id": team_id,
            "team_info": self.team_json(team),
            "keys": keys,
            "team_memberships": memberships,
        }))
    }

    /// `POST /team/delete {team_ids}`: cascades to keys and memberships; users remain.
    fn team_delete(&mut self, body: &Map<String, Value>) -> Outcome {
        let ids = match body.get("team_ids") {
            Some(Value::Array(_)) => string_list(body, "team_ids")?,
            _ => return Err(validation_error("team_ids", "Field required")),
        };
        if let Some(missing) = ids.iter().find(|id| !self.teams.contains_key(*id)) {
            return Err(detail_error(
                404,
                format!("Team not found, passed team_id={missing}"),
            ));
        }
        let mut deleted = Vec::new();
        for id in &ids {
            let Some(team) = self.teams.remove(id) else {
                continue;
            };
            let tokens: Vec<String> = self
                .keys_by_team
                .get(id)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for t in tokens {
                self.remove_key(&t);
            }
            for m in &team.members {
                if let Some(u) = m.user_id.as_deref().and_then(|uid| self.users.get_mut(uid)) {
                    u.teams.retain(|t| t != id);
                }
            }
            deleted.push(self.team_json(&team));
        }
        ok(json!({"deleted_teams": deleted}))
    }

    /// `POST /team/update {team_id, max_budget, …}`: a top-up; 404 for an unknown team.
    fn team_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(validation_error("team_id", "Field required"));
        };
        let max_budget = opt_f64(body, "max_budget")?;
        let Some(team) = self.teams.get_mut(&team_id) else {
            return Err(detail_error(
                404,
                format!("Team not found, passed team_id={team_id}"),
            ));
        };
        if body.contains_key("max_budget") {
            team.max_budget = max_budget;
        }
        if body.contains_key("metadata") {
            team.metadata = object_field(body, "metadata")?;
        }
        let out = self.team_json(&self.teams[&team_id]);
        ok(json!({"team_id": team_id, "data": out}))
    }

    /// `POST /team/member_update {team_id, user_id, max_budget_in_team}`:
    /// 404 for an unknown team, 400 for a user who is not a member.
    fn member_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(validation_error("team_id", "Field required"));
        };
        let Some(user_id) = str_field(body, "user_id").map(str::to_owned) else {
            return Err(detail_error(
                400,
                "user_id or user_email needs to be passed in",
            ));
        };
        let budget = opt_f64(body, "max_budget_in_team")?;
        let Some(team) = self.teams.get_mut(&team_id) else {
            return Err(detail_error(
                404,
                format!("Team not found for team_id={team_id}"),
            ));
        };
        if !team
            .members
            .iter()
            .any(|m| m.user_id.as_deref() == Some(&user_id))
        {
            return Err(detail_error(
                400,
                format!("User {user_id} not in team {team_id}"),
            ));
        }
        match budget {
            Some(b) => team.budgets.insert(user_id.clone(), b),
            None => team.budgets.remove(&user_id),
        };
        ok(json!({"team_id": team_id, "user_id": user_id, "max_budget_in_team": budget}))
    }

    /// `POST /team/member_add`.
    fn member_add(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(validation_error("team_id", "Field required"));
        };
        let members: Vec<&Map<String, Value>> = match body.get("member") {
            Some(Value::Object(m)) => vec![m],
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for m in list {
                    match m.as_object() {
                        Some(o) => out.push(o),
                        None => {
                            return Err(validation_error(
                                "member",
                                "Input should be a valid dictionary",
                            ))
                        }
                    }
                }
                out
            }
            _ => return Err(validation_error("member", "Field required")),
        };
        let budget = opt_f64(body, "max_budget_in_team")?;
        let mut parsed = Vec::new();
        for m in &members {
            let role = match str_field(m, "role") {
                Some(r @ ("user" | "admin")) => r,
                Some(_) => {
                    return Err(validation_error("member", "role must be 'admin' or 'user'"))
                }
                None => return Err(validation_error("member", "Field required: role")),
            };
            let user_id = str_field(m, "user_id").map(str::to_owned);
            let user_email = str_field(m, "user_email").map(str::to_owned);
            if user_id.is_none() && user_email.is_none() {
                return Err(validation_error(
                    "member",
                    "Either user_id or user_email must be provided",
                ));
            }
            parsed.push(Member {
                user_id,
                user_email,
                role: role.to_owned(),
            });
        }
        if parsed.iter().any(|m| m.role == "admin") {
            return Err(detail_error(400, NOT_PREMIUM));
        }
        let Some(team) = self.teams.get(&team_id) else {
            return Err(detail_error(
                404,
                format!("Team not found for team_id={team_id}"),
            ));
        };
        for m in &parsed {
            let already = team.members.iter().any(|e| {
                (m.user_id.is_some() && e.user_id == m.user_id)
                    || (m.user_id.is_none()
                        && m.user_email.is_some()
                        && e.user_email == m.user_email)
            });
            if already {
                let who = m
                    .user_id
                    .clone()
                    .or_else(|| m.user_email.clone())
                    .unwrap_or_default();
                let existing: Vec<String> = team
                    .members
                    .iter()
                    .map(|e| {
                        format!(
                            "Member(user_id='{}', user_email={}, role='{}')",
                            e.user_id.as_deref().unwrap_or("None"),
                            e.user_email
                                .as_deref()
                                .map_or("None".into(), |x| format!("'{x}'")),
                            e.role
                        )
                    })
                    .collect();
                return Err(proxy_error(
                    400,
                    format!(
                        "User={who} already in team. Existing members=[{}]",
                        existing.join(", ")
                    ),
                    "team_member_already_in_team",
                    "member",
                ));
            }
        }
        let mut updated_users = Vec::new();
        let mut updated_memberships = Vec::new();
        for mut m in parsed {
            // Find or create the user (by id, else by email).
            let uid = match &m.user_id {
                Some(uid) => {
                    if !self.users.contains_key(uid) {
                        self.insert_user(Self::new_user(uid, m.user_email.clone()));
                    }
                    uid.clone()
                }
                None => {
                    let email = m.user_email.clone().unwrap_or_default();
                    match self.email_owner(&email) {
                        Some(u) => u.user_id.clone(),
                        None => {
                            let uid = uuid::Uuid::new_v4().to_string();
                            self.insert_user(Self::new_user(&uid, Some(email)));
                            uid
                        }
                    }
                }
            };
            m.user_id = Some(uid.clone());
            if let Some(u) = self.users.get_mut(&uid) {
                if !u.teams.contains(&team_id) {
                    u.teams.push(team_id.clone());
                }
                updated_users.push(Self::user_json(u));
            }
            let team = self.teams.get_mut(&team_id).expect("checked above");
            if let Some(b) = budget {
                team.budgets.insert(uid.clone(), b);
                updated_memberships.push(json!({
                    "team_id": team_id, "user_id": uid, "spend": 0.0,
                    "budget_id": format!("budget-{team_id}-{uid}"),
                    "litellm_budget_table": {"max_budget": b},
                }));
            }
            team.members.push(m);
        }
        let team = &self.teams[&team_id];
        let mut out = self.team_json(team);
        out["updated_users"] = json!(updated_users);
        out["updated_team_memberships"] = json!(updated_memberships);
        ok(out)
    }

    /// `POST /team/member_delete`.
    fn member_delete(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(detail_error(400, "No team id passed in"));
        };
        let user_id = str_field(body, "user_id").map(str::to_owned);
        let user_email = str_field(body, "user_email").map(str::to_owned);
        if user_id.is_none() && user_email.is_none() {
            return Err(detail_error(
                400,
                "Either user_id or user_email needs to be passed in",
            ));
        }
        let Some(team) = self.teams.get_mut(&team_id) else {
            // The real proxy answers 404 for an unknown team, as `/team/member_add` does.
            return Err(detail_error(
                404,
                format!("Team not found for team_id={team_id}"),
            ));
        };
        let before = team.members.len();
        let mut removed_ids = Vec::new();
        team.members.retain(|m| {
            let hit = (user_id.is_some() && m.user_id == user_id)
                || (user_email.is_some() && m.user_email.is_some() && m.user_email == user_email);
            if hit {
                if let Some(uid) = &m.user_id {
                    removed_ids.push(uid.clone());
                }
            }
            !hit
        });
        if team.members.len() == before {
            let who = user_id.or(user_email).unwrap_or_default();
            return Err(detail_error(
                400,
                format!("User {who} not in team {team_id}"),
            ));
        }
        for uid in &removed_ids {
            team.budgets.remove(uid);
        }
        let out = self.team_json(&self.teams[&team_id]);
        for uid in &removed_ids {
            if let Some(u) = self.users.get_mut(uid) {
                u.teams.retain(|t| t != &team_id);
            }
        }
        ok(out)
    }

    /// `POST /user/new`.
    fn user_new(&mut self, body: &Map<String, Value>) -> Outcome {
        let user_id = match body.get("user_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(_) => {
                return Err(validation_error(
                    "user_id",
                    "Input should be a valid string",
                ))
            }
        };
        if self.users.contains_key(&user_id) {
            return Err(wrapped_error(
                409,
                &format!("User with id {user_id} already exists"),
            ));
        }
        let email = str_field(body, "user_email")
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        if let Some(e) = &email {
            if let Some(owner) = self.email_owner(e) {
                let existing = owner.user_email.clone().unwrap_or_default();
                return Err(wrapped_error(
                    409,
                    &format!("User with email {existing} already exists"),
                ));
            }
        }
        let mut user = Self::new_user(&user_id, email);
        user.max_budget = opt_f64(body, "max_budget")?;
        user.models = string_list(body, "models")?;
        user.metadata = object_field(body, "metadata")?;
        if let Some(role) = str_field(body, "user_role") {
            user.user_role = role.to_owned();
        }
        let auto_create_key = body
            .get("auto_create_key")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut key_value = String::new();
        if auto_create_key {
            key_value = random_key();
            let key = Key {
                seq: 0,
                token: hash_key(&key_value),
                key_name: abbreviate(&key_value),
                key_alias: str_field(body, "key_alias").map(str::to_owned),
                team_id: None,
                user_id: Some(user_id.clone()),
                models: user.models.clone(),
                metadata: json!({}),
                spend: 0.0,
                max_budget: None,
            };
            self.insert_key(key);
        }
        let mut out = Self::user_json(&user);
        out["key"] = json!(key_value);
        out["expires"] = Value::Null;
        self.insert_user(user);
        ok(out)
    }

    /// `GET /user/info?user_id=`.
    fn user_info(&self, user_id: Option<&str>) -> Outcome {
        let Some(user_id) = user_id else {
            return Err(wrapped_error(400, "user_id is required"));
        };
        let Some(user) = self.users.get(user_id) else {
            return Err(proxy_error(
                404,
                format!("User {user_id} not found"),
                "internal_server_error",
                "None",
            ));
        };
        let keys: Vec<Value> = self
            .keys_by_user
            .get(user_id)
            .map(|set| {
                self.keys_sorted(set.iter())
                    .into_iter()
                    .map(|k| Self::key_json(k, true))
                    .collect()
            })
            .unwrap_or_default();
        let teams: Vec<Value> = user
            .teams
            .iter()
            .filter_map(|t| self.teams.get(t))
            .map(|t| self.team_json(t))
            .collect();
        ok(json!({
            "user_id": user_id,
            "user_info": Self::user_json(user),
            "keys": keys,
            "teams": teams,
        }))
    }

    /// `POST /user/update`: an upsert that does not check email uniqueness.
    fn user_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let user_id = match (str_field(body, "user_id"), str_field(body, "user_email")) {
            (Some(uid), _) => uid.to_owned(),
            (None, Some(email)) => match self.email_owner(email) {
                Some(u) => u.user_id.clone(),
                None => uuid::Uuid::new_v4().to_string(),
            },
            (None, None) => {
                return Err(wrapped_error(
                    400,
                    "Either user_id or user_email needs to be passed in",
                ))
            }
        };
        let mut user = self
            .users
            .get(&user_id)
            .cloned()
            .unwrap_or_else(|| Self::new_user(&user_id, None));
        if body.contains_key("max_budget") {
            user.max_budget = opt_f64(body, "max_budget")?;
        }
        if let Some(email) = str_field(body, "user_email") {
            user.user_email = Some(email.to_owned());
        }
        if let Some(spend) = opt_f64(body, "spend")? {
            user.spend = spend;
        }
        if body.contains_key("models") {
            user.models = string_list(body, "models")?;
        }
        if body.contains_key("metadata") {
            user.metadata = object_field(body, "metadata")?;
        }
        if let Some(role) = str_field(body, "user_role") {
            user.user_role = role.to_owned();
        }
        let out = Self::user_json(&user);
        self.insert_user(user);
        ok(json!({"user_id": user_id, "data": out}))
    }

    /// `POST /key/generate`, quirks included.
    fn key_generate(&mut self, body: &Map<String, Value>) -> Outcome {
        let key_value = match body.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(validation_error("key", "Input should be a valid string")),
        };
        if let Some(k) = &key_value {
            if !k.starts_with("sk-") {
                return Err(proxy_error(
                    400,
                    format!("Invalid key format. LiteLLM Virtual Key must start with 'sk-'. Received: {k}"),
                    "bad_request_error",
                    "key",
                ));
            }
            if k.chars().count() < 16 {
                return Err(proxy_error(
                    400,
                    "Invalid key format. A custom key must be at least 16 characters long.",
                    "bad_request_error",
                    "key",
                ));
            }
        }
        let alias = match body.get("key_alias") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => Some(a.clone()),
            Some(_) => {
                return Err(validation_error(
                    "key_alias",
                    "Input should be a valid string",
                ))
            }
        };
        if let Some(a) = &alias {
            if self.aliases.contains_key(a) {
                return Err(proxy_error(
                    400,
                    format!("Key with alias '{a}' already exists. Unique key aliases across all keys are required."),
                    "bad_request_error",
                    "key_alias",
                ));
            }
        }
        let key_value = key_value.unwrap_or_else(random_key);
        let token = hash_key(&key_value);
        if self.keys.contains_key(&token) {
            // The real proxy answers 200, writes nothing, and echoes the request.
            let mut echo = body.clone();
            echo.insert("key".into(), json!(key_value));
            return ok(Value::Object(echo));
        }
        let key = Key {
            seq: 0,
            token: token.clone(),
            key_name: abbreviate(&key_value),
            key_alias: alias,
            team_id: str_field(body, "team_id").map(str::to_owned),
            user_id: str_field(body, "user_id").map(str::to_owned),
            models: string_list(body, "models")?,
            metadata: object_field(body, "metadata")?,
            spend: 0.0,
            max_budget: opt_f64(body, "max_budget")?,
        };
        let mut out = Self::key_json(&key, true);
        out["key"] = json!(key_value);
        out["token_id"] = json!(token);
        self.insert_key(key);
        ok(out)
    }

    /// `GET /key/info?key=` (a key or its hashed token).
    fn key_info(&self, key: Option<&str>) -> Outcome {
        let found = key.and_then(|k| self.keys.get(&token_of(k)));
        match found {
            Some(k) => ok(json!({"key": key, "info": Self::key_json(k, false)})),
            None => Err(proxy_error(
                404,
                "Key not found in database",
                "not_found_error",
                "key",
            )),
        }
    }

    /// `GET /key/list?user_id=&team_id=&key_alias=&return_full_object=&page=&size=`.
    fn key_list(&self, query: &str) -> Outcome {
        let page = match query_param(query, "page").map(|p| p.parse::<usize>()) {
            None => 1,
            Some(Ok(p)) if p >= 1 => p,
            _ => {
                return Err(validation_error(
                    "page",
                    "Input should be greater than or equal to 1",
                ))
            }
        };
        let size = match query_param(query, "size").map(|p| p.parse::<usize>()) {
            None => 10,
            Some(Ok(s)) if (1..=100).contains(&s) => s,
            _ => {
                return Err(validation_error(
                    "size",
                    "Input should be between 1 and 100",
                ))
            }
        };
        let full = query_param(query, "return_full_object").is_some_and(|v| v == "true");
        let user_id = query_param(query, "user_id");
        let team_id = query_param(query, "team_id");
        let alias = query_param(query, "key_alias");
        let mut keys: Vec<&Key> = match (&user_id, &team_id) {
            (Some(u), _) => self
                .keys_by_user
                .get(u)
                .map(|s| self.keys_sorted(s.iter()))
                .unwrap_or_default(),
            (None, Some(t)) => self
                .keys_by_team
                .get(t)
                .map(|s| self.keys_sorted(s.iter()))
                .unwrap_or_default(),
            (None, None) => self.keys_sorted(self.keys.keys()),
        };
        keys.retain(|k| {
            team_id
                .as_ref()
                .is_none_or(|t| k.team_id.as_ref() == Some(t))
                && alias
                    .as_ref()
                    .is_none_or(|a| k.key_alias.as_ref() == Some(a))
        });
        let total = keys.len();
        let total_pages = total.div_ceil(size).max(1);
        let listed: Vec<Value> = keys
            .iter()
            .skip((page - 1) * size)
            .take(size)
            .map(|k| {
                if full {
                    Self::key_json(k, true)
                } else {
                    json!(k.token)
                }
            })
            .collect();
        ok(json!({
            "keys": listed,
            "total_count": total,
            "current_page": page,
            "total_pages": total_pages,
        }))
    }

    /// `POST /key/update {key, …}` (key or hashed token).
    fn key_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(given) = str_field(body, "key") else {
            return Err(validation_error("key", "Field required"));
        };
        let token = token_of(given);
        let Some(existing) = self.keys.get(&token).cloned() else {
            return Err(wrapped_error(404, "Key not found in database"));
        };
        let mut key = existing;
        if body.contains_key("team_id") {
            let team_id = str_field(body, "team_id").map(str::to_owned);
            if let Some(t) = &team_id {
                if !self.teams.contains_key(t) {
                    return Err(wrapped_error(
                        404,
                        &format!(
                            "Team doesn't exist in db. Team={t}. Create team via `/team/new` call."
                        ),
                    ));
                }
            }
            key.team_id = team_id;
        }
        if body.contains_key("key_alias") {
            let alias = str_field(body, "key_alias").map(str::to_owned);
            if let Some(a) = &alias {
                if self.aliases.get(a).is_some_and(|t| t != &token) {
                    return Err(proxy_error(
                        400,
                        format!("Key with alias '{a}' already exists. Unique key aliases across all keys are required."),
                        "bad_request_error",
                        "key_alias",
                    ));
                }
            }
            key.key_alias = alias;
        }
        if body.contains_key("user_id") {
            key.user_id = str_field(body, "user_id").map(str::to_owned);
        }
        if body.contains_key("models") {
            key.models = string_list(body, "models")?;
        }
        if body.contains_key("metadata") {
            key.metadata = object_field(body, "metadata")?;
        }
        if body.contains_key("max_budget") {
            key.max_budget = opt_f64(body, "max_budget")?;
        }
        let seq = key.seq;
        self.remove_key(&token);
        self.insert_key(key);
        if let Some(k) = self.keys.get_mut(&token) {
            k.seq = seq;
        }
        let mut out = Self::key_json(&self.keys[&token], true);
        out["key"] = json!(given);
        ok(out)
    }

    /// `POST /key/delete {keys, key_aliases}`: keys by value or hashed token,
    /// and/or by alias. Deletes those that exist and answers with what was
    /// asked; 404 when none of them exists.
    fn key_delete(&mut self, body: &Map<String, Value>) -> Outcome {
        let keys = string_list(body, "keys")?;
        let aliases = string_list(body, "key_aliases")?;
        if !body.contains_key("keys") && !body.contains_key("key_aliases") {
            return Err(validation_error(
                "keys",
                "Value error, Must provide either keys or key_aliases",
            ));
        }
        let mut tokens: Vec<String> = keys.iter().map(|k| token_of(k)).collect();
        tokens.extend(aliases.iter().filter_map(|a| self.aliases.get(a).cloned()));
        let mut deleted = 0;
        for t in &tokens {
            if self.remove_key(t).is_some() {
                deleted += 1;
            }
        }
        if deleted == 0 {
            return Err(proxy_error(
                404,
                "Authentication Error - Key not found in database",
                "not_found_error",
                "keys",
            ));
        }
        let mut asked = keys;
        asked.extend(aliases);
        ok(json!({"deleted_keys": asked}))
    }

    /// `GET /v1/models` for `presented` (the master key or a virtual key):
    /// the key's models, else its team's, else every model the proxy serves.
    /// `None` when the key does not exist.
    fn models_for(&self, presented: &str, master_key: &str) -> Option<Vec<String>> {
        if presented == master_key {
            return Some(self.served_models.clone());
        }
        let key = self.keys.get(&hash_key(presented))?;
        let team_models = key
            .team_id
            .as_ref()
            .and_then(|t| self.teams.get(t))
            .map(|t| t.models.clone())
            .unwrap_or_default();
        Some(if !key.models.is_empty() {
            key.models.clone()
        } else if !team_models.is_empty() {
            team_models
        } else {
            self.served_models.clone()
        })
    }
}

/// The answer to `GET /v1/models`, OpenAI style.
fn models_list(models: &[String]) -> Value {
    json!({
        "object": "list",
        "data": models.iter().map(|m| json!({
            "id": m, "object": "model", "created": 1_677_610_602, "owned_by": "openai",
        })).collect::<Vec<_>>(),
    })
}

/// The identity of the resource a mutating call touches, for `--perform-then-502`.
fn resource_of(endpoint: &str, body: &Map<String, Value>, reply: &Reply) -> Option<String> {
    let s = |f: &str| str_field(body, f).unwrap_or("");
    let from_reply = |f: &str| match reply {
        Reply::Json(_, v) => v.get(f).and_then(Value::as_str).unwrap_or("").to_owned(),
        Reply::Html(..) => String::new(),
    };
    Some(match endpoint {
        "team/new" => format!("team:{}", from_reply("team_id")),
        "user/new" => format!("user:{}", from_reply("user_id")),
        "user/update" => format!("user-update:{}", s("user_id")),
        "team/update" => format!("team-update:{}", s("team_id")),
        "team/member_update" => format!("member-update:{}:{}", s("team_id"), s("user_id")),
        "team/member_add" => {
            let member = body.get("member").map(Value::to_string).unwrap_or_default();
            format!("member:{}:{member}", s("team_id"))
        }
        "team/member_delete" => format!(
            "member-delete:{}:{}:{}",
            s("team_id"),
            s("user_id"),
            s("user_email")
        ),
        "team/delete" => {
            let mut ids = string_list(body, "team_ids").unwrap_or_default();
            ids.sort();
            format!("team-delete:{}", ids.join(","))
        }
        "key/generate" => format!("key:{}", hash_key(&from_reply("key"))),
        "key/update" => format!("key-update:{}", token_of(s("key"))),
        "key/delete" => {
            let mut keys: Vec<String> = string_list(body, "keys")
                .unwrap_or_default()
                .iter()
                .map(|k| token_of(k))
                .collect();
            keys.sort();
            let mut aliases = string_list(body, "key_aliases").unwrap_or_default();
            aliases.sort();
            format!("key-delete:{}:{}", keys.join(","), aliases.join(","))
        }
        _ => return None,
    })
}

/// A query string as a JSON object of decoded strings; a repeated parameter
/// becomes a list of its values.
fn query_json(query: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), Value::String(v.into_owned()));
        match out.get_mut(&k) {
            None => {
                out.insert(k, v);
            }
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = json!([first.take(), v]),
        }
    }
    Value::Object(out)
}

/// Percent-decodes one query parameter (`+` is a space, as FastAPI reads it).
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

struct Shared {
    master_key: SecretString,
    db: Mutex<Db>,
    faults: RwLock<Arc<Faults>>,
    requests: Mutex<HashMap<(&'static str, u16), u64>>,
    /// Each endpoint's request bodies (or queries), oldest first. They may
    /// hold keys: tests only, in memory, never logged.
    bodies: Mutex<HashMap<&'static str, VecDeque<Value>>>,
    redirect_to: RwLock<Option<String>>,
    dropped: AtomicU64,
}

impl Shared {
    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn faults(&self) -> Arc<Faults> {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn redirect_to(&self) -> Option<String> {
        self.redirect_to
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps a request's JSON body; without a body, its query as an object.
    fn record_request(&self, endpoint: &'static str, uri: &Uri, body: &Bytes) {
        let value = if body.is_empty() {
            query_json(uri.query().unwrap_or(""))
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        let list = bodies.entry(endpoint).or_default();
        if list.len() >= MAX_RECORDED_REQUESTS {
            list.pop_front();
        }
        list.push_back(value);
    }

    fn record(&self, endpoint: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
    }
}

fn endpoint_name(path: &str) -> &'static str {
    let path = path.trim_start_matches('/');
    ENDPOINTS
        .iter()
        .copied()
        .find(|e| *e == path)
        .unwrap_or(match path {
            "health/liveliness" | "health/readiness" => "health",
            // The proxy serves the OpenAI model list under both paths.
            "models" => "v1/models",
            _ => "other",
        })
}

fn method_of(endpoint: &str) -> Method {
    match endpoint {
        "team/info" | "user/info" | "key/info" | "key/list" | "v1/models" | "health" => Method::GET,
        _ => Method::POST,
    }
}

fn into_response(reply: Reply) -> Response {
    match reply {
        Reply::Json(status, body) => {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(CONTENT_TYPE, "application/json")],
                bytes,
            )
                .into_response()
        }
        Reply::Html(status, html) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(CONTENT_TYPE, "text/html")],
            html,
        )
            .into_response(),
    }
}

/// Checks the master key the way the proxy does (see [`presented_key`]).
#[cfg(test)]
fn authenticate(headers: &HeaderMap, master_key: &str) -> Result<(), Reply> {
    let presented = presented_key(headers)?;
    if presented == master_key {
        return Ok(());
    }
    Err(invalid_key(&presented))
}

/// The key a request presents, looked for the way the proxy does:
/// `x-litellm-api-key`, then `Authorization: Bearer`, then `api-key`,
/// `x-api-key`, `x-goog-api-key`. A 401 when there is none or
/// `Authorization` lacks `Bearer `.
fn presented_key(headers: &HeaderMap) -> Result<String, Reply> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    };
    let strip_bearer = |v: String| match v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        Some(k) => k.trim().to_owned(),
        None => v,
    };
    let presented = if let Some(v) = header("x-litellm-api-key") {
        strip_bearer(v)
    } else if let Some(v) = header(AUTHORIZATION.as_str()) {
        match v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            Some(k) => k.trim().to_owned(),
            None => {
                return Err(proxy_error(
                    401,
                    format!("Authentication Error, Malformed API Key passed in. Ensure Key has `Bearer ` prefix. Passed in: {v}"),
                    "auth_error",
                    "None",
                ))
            }
        }
    } else if let Some(v) = header("api-key")
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"))
    {
        v
    } else {
        return Err(proxy_error(
            401,
            "Authentication Error, No api key passed in.",
            "auth_error",
            "None",
        ));
    };
    Ok(presented)
}

/// The proxy's 401 for a key it does not know (it abbreviates and hashes
/// the key it received, as the real proxy does).
fn invalid_key(presented: &str) -> Reply {
    proxy_error(
        401,
        format!(
            "Authentication Error, Invalid proxy server token passed. Received API Key = {}, Key Hash (Token) ={}. Unable to find token in cache or `LiteLLM_VerificationTokenTable`",
            abbreviate(presented),
            hash_key(presented)
        ),
        "auth_error",
        "None",
    )
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let endpoint = endpoint_name(uri.path());
    shared.record_request(endpoint, &uri, &body);
    if let Some(base) = shared.redirect_to() {
        shared.record(endpoint, 307);
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(LOCATION, format!("{base}{path_and_query}"))],
        )
            .into_response();
    }
    if endpoint == "health" {
        shared.record(endpoint, 200);
        return into_response(Reply::Json(200, json!("I'm alive!")));
    }
    let faults = shared.faults();
    let roll = simkit::roll(&faults, endpoint);
    simkit::pause(roll.delay).await;
    if roll.drop {
        shared.record(endpoint, 0);
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return conn.drop_connection();
    }
    let reply = respond(
        &shared, &faults, &roll, endpoint, &method, &uri, &headers, &body,
    );
    shared.record(endpoint, reply.status());
    into_response(reply)
}

#[allow(clippy::too_many_arguments)]
fn respond(
    shared: &Shared,
    faults: &Faults,
    roll: &Roll<'_>,
    endpoint: &'static str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Reply {
    if roll.error {
        return match rand::rng().random_range(0..3u8) {
            0 => proxy_error(
                500,
                "Internal Server Error, simulated fault (--error-rate)",
                "internal_server_error",
                "None",
            ),
            1 => Reply::Html(502, BAD_GATEWAY_HTML),
            _ => Reply::Html(503, UNAVAILABLE_HTML),
        };
    }
    if endpoint == "other" {
        return Reply::Json(404, json!({"detail": "Not Found"}));
    }
    if method != method_of(endpoint) {
        return Reply::Json(405, json!({"detail": "Method Not Allowed"}));
    }
    let presented = match presented_key(headers) {
        Ok(k) => k,
        Err(reply) => return reply,
    };
    let master_key = shared.master_key.expose_secret();
    // `/v1/models` takes virtual keys too; the admin endpoints only the master key.
    let models = if endpoint == "v1/models" {
        let models = shared.db().models_for(&presented, master_key);
        match models {
            Some(m) => Some(m),
            None => return invalid_key(&presented),
        }
    } else if presented != master_key {
        return invalid_key(&presented);
    } else {
        None
    };
    if let Some((_, status)) = roll.fail {
        return proxy_error(
            status,
            format!("simulated failure (--fail {endpoint}={status})"),
            if status >= 500 {
                "internal_server_error"
            } else {
                "bad_request_error"
            },
            "None",
        );
    }
    if let Some(models) = models {
        return Reply::Json(200, models_list(&models));
    }
    let query = uri.query().unwrap_or("");
    let empty = Map::new();
    let parsed;
    let body = if *method == Method::POST {
        parsed = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return validation_error("body", "Input should be a valid dictionary"),
            Err(e) => return validation_error("body", &format!("JSON decode error: {e}")),
        };
        &parsed
    } else {
        &empty
    };
    let mut db = shared.db();
    let outcome = match endpoint {
        "team/new" => db.team_new(body),
        "team/info" => db.team_info(query_param(query, "team_id").as_deref()),
        "team/delete" => db.team_delete(body),
        "team/member_add" => db.member_add(body),
        "team/member_delete" => db.member_delete(body),
        "team/update" => db.team_update(body),
        "team/member_update" => db.member_update(body),
        "user/new" => db.user_new(body),
        "user/info" => db.user_info(query_param(query, "user_id").as_deref()),
        "user/update" => db.user_update(body),
        "key/generate" => db.key_generate(body),
        "key/info" => db.key_info(query_param(query, "key").as_deref()),
        "key/list" => db.key_list(query),
        "key/update" => db.key_update(body),
        "key/delete" => db.key_delete(body),
        _ => Err(Reply::Json(404, json!({"detail": "Not Found"}))),
    };
    match outcome {
        Ok(reply) => {
            if faults.perform_then_502 && *method == Method::POST {
                if let Some(resource) = resource_of(endpoint, body, &reply) {
                    if db.performed.insert(resource) {
                        return Reply::Html(502, BAD_GATEWAY_HTML);
                    }
                }
            }
            reply
        }
        Err(reply) => reply,
    }
}

/// A running simulator. Dropping it stops the server too.
pub struct LiteLlmSimulator {
    shared: Arc<Shared>,
    server: SimServer,
}

impl std::fmt::Debug for LiteLlmSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiteLlmSimulator")
            .field("base_url", &self.base_url())
            .field("faults", &self.shared.faults())
            .finish_non_exhaustive()
    }
}

impl LiteLlmSimulator {
    /// Starts serving on `127.0.0.1:<args.port>` with the arguments' key and faults.
    pub async fn start(args: &SimulatorArgs) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            master_key: args.master_key.clone(),
            db: Mutex::new(Db {
                served_models: args.models.clone(),
                ..Db::default()
            }),
            faults: RwLock::new(Arc::new(args.faults().normalized())),
            requests: Mutex::new(HashMap::new()),
            bodies: Mutex::new(HashMap::new()),
            redirect_to: RwLock::new(
                args.redirect_to
                    .as_deref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
            ),
            dropped: AtomicU64::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = SimServer::start("LiteLLM", args.port, app).await?;
        Ok(Self { shared, server })
    }

    /// Starts on any free port with the default master key and no faults.
    pub async fn start_local() -> io::Result<Self> {
        Self::start(&SimulatorArgs {
            port: 0,
            ..SimulatorArgs::default()
        })
        .await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The master key clients must present.
    pub fn master_key(&self) -> String {
        self.shared.master_key.expose_secret().to_owned()
    }

    /// The master key, kept secret.
    pub fn master_key_secret(&self) -> SecretString {
        self.shared.master_key.clone()
    }

    /// Replaces the injected faults; requests already waiting keep their old ones.
    pub fn set_faults(&self, faults: Faults) {
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(faults.normalized());
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        (*self.shared.faults()).clone()
    }

    /// Makes every request answer `307 Temporary Redirect` to `base_url`
    /// plus the request's path and query (`None` stops it). Independent of
    /// [`set_faults`](Self::set_faults).
    pub fn set_redirect_to(&self, base_url: Option<&str>) {
        *self
            .shared
            .redirect_to
            .write()
            .unwrap_or_else(|e| e.into_inner()) =
            base_url.map(|u| u.trim_end_matches('/').to_owned());
    }

    /// Replaces the models the proxy serves (what `GET /v1/models` lists
    /// for a key without a model restriction, and for the master key).
    pub fn set_models<S: AsRef<str>>(&self, models: &[S]) {
        self.shared.db().served_models = models.iter().map(|m| m.as_ref().to_owned()).collect();
    }

    /// The bodies of the requests `endpoint` (`key/generate`, `/team/info`,
    /// `v1/models`, …) received, oldest first: the JSON body, or for a
    /// request without one (GET) its query as an object of strings. Every
    /// request counts, faulted and dropped ones included; at most
    /// [`MAX_RECORDED_REQUESTS`] per endpoint are kept. They may contain
    /// keys: for assertions only, never print them.
    pub fn requests(&self, endpoint: &str) -> Vec<Value> {
        let bodies = self.shared.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies
            .get(endpoint.trim_start_matches('/'))
            .map(|list| list.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What the simulator holds and how many requests it answered.
    pub fn stats(&self) -> SimStats {
        let (teams, users, memberships, keys) = {
            let db = self.shared.db();
            (
                db.teams.len(),
                db.users.len(),
                db.memberships(),
                db.keys.len(),
            )
        };
        let mut requests: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
        for ((endpoint, status), n) in self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *requests
                .entry((*endpoint).to_owned())
                .or_default()
                .entry(*status)
                .or_default() += n;
        }
        SimStats {
            teams,
            users,
            memberships,
            keys,
            requests,
        }
    }

    /// One team, with its members (without the caller admin) and keys.
    pub fn team(&self, team_id: &str) -> Option<TeamView> {
        let db = self.shared.db();
        let t = db.teams.get(team_id)?;
        let members = t
            .members
            .iter()
            .filter(|m| m.user_id.as_deref() != Some(CALLER_ADMIN_USER_ID))
            .map(|m| {
                let user_id = m.user_id.clone().unwrap_or_default();
                TeamMemberView {
                    max_budget_in_team: t.budgets.get(&user_id).copied(),
                    user_id,
                    role: m.role.clone(),
                }
            })
            .collect();
        let keys = db
            .keys_by_team
            .get(team_id)
            .map(|s| db.keys_sorted(s.iter()).into_iter().map(key_view).collect())
            .unwrap_or_default();
        Some(TeamView {
            team_id: t.team_id.clone(),
            team_alias: t.team_alias.clone(),
            max_budget: t.max_budget,
            models: t.models.clone(),
            metadata: t.metadata.clone(),
            caller_admin: t
                .members
                .iter()
                .any(|m| m.user_id.as_deref() == Some(CALLER_ADMIN_USER_ID) && m.role == "admin"),
            members,
            keys,
        })
    }

    /// One user.
    pub fn user(&self, user_id: &str) -> Option<UserView> {
        let db = self.shared.db();
        let u = db.users.get(user_id)?;
        Some(UserView {
            user_id: u.user_id.clone(),
            email: u.user_email.clone(),
            max_budget: u.max_budget,
            spend: u.spend,
            teams: u.teams.clone(),
            keys: db.keys_by_user.get(user_id).map_or(0, HashSet::len),
        })
    }

    /// One key, looked up by its value or its hashed token.
    pub fn key(&self, key_or_token: &str) -> Option<KeyView> {
        let db = self.shared.db();
        db.keys.get(&token_of(key_or_token)).map(key_view)
    }

    /// Whether the proxy holds this key (by value or hashed token).
    pub fn has_key(&self, key_or_token: &str) -> bool {
        self.shared.db().keys.contains_key(&token_of(key_or_token))
    }

    /// The keys of a user, oldest first.
    pub fn user_keys(&self, user_id: &str) -> Vec<KeyView> {
        let db = self.shared.db();
        db.keys_by_user
            .get(user_id)
            .map(|s| db.keys_sorted(s.iter()).into_iter().map(key_view).collect())
            .unwrap_or_default()
    }

    /// Forgets a user (as if the proxy never had them); their keys stay.
    pub fn delete_user(&self, user_id: &str) {
        let mut db = self.shared.db();
        if let Some(user) = db.users.remove(user_id) {
            db.remove_email(&user.user_email);
        }
    }

    /// Adds a legacy (pre-organization) user with personal keys (no team,
    /// no alias), for migration tests. Replaces a user with the same id.
    pub fn seed_user(
        &self,
        user_id: &str,
        email: Option<&str>,
        max_budget: Option<f64>,
        spend: f64,
        keys: &[&str],
    ) {
        let mut db = self.shared.db();
        let mut user = Db::new_user(user_id, email.map(str::to_owned));
        if let Some(old) = db.users.get(user_id) {
            user.teams = old.teams.clone();
        }
        user.max_budget = max_budget;
        user.spend = spend;
        db.insert_user(user);
        for key in keys {
            let token = token_of(key);
            db.remove_key(&token);
            db.insert_key(Key {
                seq: 0,
                token,
                key_name: abbreviate(key),
                key_alias: None,
                team_id: None,
                user_id: Some(user_id.to_owned()),
                models: Vec::new(),
                metadata: json!({}),
                spend: 0.0,
                max_budget: None,
            });
        }
    }

    /// Stops accepting, lets answers in flight finish (up to 5 s), then returns.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn key_view(k: &Key) -> KeyView {
    KeyView {
        token: k.token.clone(),
        alias: k.key_alias.clone(),
        user_id: k.user_id.clone(),
        team_id: k.team_id.clone(),
        models: k.models.clone(),
        metadata: k.metadata.clone(),
    }
}

fn describe_faults(f: &Faults, redirect_to: Option<&str>) -> String {
    let mut parts = Vec::new();
    if f.error_rate > 0.0 {
        parts.push(format!("error rate {}", f.error_rate));
    }
    if f.latency_ms.1 > 0 {
        parts.push(format!("latency {}..{} ms", f.latency_ms.0, f.latency_ms.1));
    }
    if f.perform_then_502 {
        parts.push("perform-then-502".to_owned());
    }
    if f.drop_rate > 0.0 {
        parts.push(format!("drop rate {}", f.drop_rate));
    }
    for (e, s) in &f.fail {
        parts.push(format!("{e} fails with {s}"));
    }
    if let Some(url) = redirect_to {
        parts.push(format!("every request redirected (307) to {url}"));
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Runs the simulator until Ctrl-C or SIGTERM (for `orgkeeper simulate litellm`).
pub async fn serve_forever(args: SimulatorArgs) -> anyhow::Result<()> {
    let sim = LiteLlmSimulator::start(&args)
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    println!("LiteLLM simulator listening on {}", sim.base_url());
    println!(
        "master key: {}",
        if sim.master_key() == DEFAULT_MASTER_KEY {
            "the development default (see --help)"
        } else {
            "from --master-key / LITELLM_MASTER_KEY"
        }
    );
    println!(
        "faults: {}",
        describe_faults(&sim.faults(), args.redirect_to.as_deref())
    );
    println!("models: {}", args.models.join(", "));
    println!("press Ctrl-C to stop");
    simkit::serve_until_signal(sim.server, "stopping").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        assert_eq!(
            parse_fail("/key/generate=400").unwrap(),
            ("key/generate".into(), 400)
        );
        assert!(parse_fail("key/nope=400").is_err());
        assert!(parse_fail("key/generate=200").is_err());
        assert!(parse_fail("*=503").is_err());
    }

    #[test]
    fn the_command_line_parses_every_fault_flag() {
        use clap::{CommandFactory, Parser};
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: SimulatorArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "sim",
            "--port",
            "0",
            "--master-key",
            "sk-custom-master-key-1",
            "--error-rate",
            "0.25",
            "--latency-ms",
            "5..40",
            "--perform-then-502",
            "--drop-rate",
            "0.1",
            "--fail",
            "key/generate=400",
            "--fail",
            "/team/new=503",
            "--fail",
            "key/delete=500",
            "--redirect-to",
            "http://127.0.0.1:9/",
            "--models",
            "model-a,model-b",
            "--models",
            "model-c",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!(a.port, 0);
        assert_eq!(a.master_key.expose_secret(), "sk-custom-master-key-1");
        assert!(!format!("{a:?}").contains("custom-master"));
        let f = a.faults();
        assert_eq!(
            (f.error_rate, f.latency_ms, f.drop_rate),
            (0.25, (5, 40), 0.1)
        );
        assert!(f.perform_then_502);
        assert_eq!(
            f.fail,
            vec![
                ("key/generate".to_string(), 400),
                ("team/new".to_string(), 503),
                ("key/delete".to_string(), 500),
            ]
        );
        assert_eq!(a.redirect_to.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(a.models, ["model-a", "model-b", "model-c"]);
        assert!(Cli::try_parse_from(["sim", "--redirect-to", "ftp://x"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--redirect-to", "http://x/?a=1"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--redirect-to", "not a url"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--error-rate", "2"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--fail", "nope"]).is_err());
        let d = Cli::try_parse_from(["sim"]).unwrap().args;
        assert_eq!((d.port, d.latency_ms, d.fail.len()), (4000, (0, 0), 0));
        assert_eq!(
            (d.redirect_to, d.models),
            (None, vec![DEFAULT_MODELS[0].to_string()])
        );
        let def = SimulatorArgs::default();
        assert_eq!(
            (def.redirect_to, def.models),
            (None, vec![DEFAULT_MODELS[0].to_string()])
        );
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_param("a=1&user_id=x%40y.z+w", "user_id").as_deref(),
            Some("x@y.z w")
        );
        assert_eq!(query_param("a=1", "user_id"), None);
        assert_eq!(query_param("a=100%", "a").as_deref(), Some("100%"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(
            query_json("a=1&b=x%20y&a=2&a=3&c"),
            json!({"a": ["1", "2", "3"], "b": "x y", "c": ""})
        );
        assert_eq!(query_json(""), json!({}));
    }

    #[test]
    fn endpoints_have_names_and_methods() {
        assert_eq!(endpoint_name("/key/delete"), "key/delete");
        assert_eq!(method_of("key/delete"), Method::POST);
        assert_eq!(endpoint_name("/v1/models"), "v1/models");
        assert_eq!(endpoint_name("/models"), "v1/models");
        assert_eq!(method_of("v1/models"), Method::GET);
        assert_eq!(
            parse_fail("v1/models=401").unwrap(),
            ("v1/models".into(), 401)
        );
        let body = json!({"keys": ["sk-b-0123456789abcdef", "aa"], "key_aliases": ["z", "y"]});
        let reply = Reply::Json(200, json!({}));
        assert_eq!(
            resource_of("key/delete", body.as_object().unwrap(), &reply).unwrap(),
            format!("key-delete:{}:y,z", {
                let mut t = [hash_key("sk-b-0123456789abcdef"), "aa".to_string()];
                t.sort();
                t.join(",")
            })
        );
    }

    #[test]
    fn auth_accepts_every_header_form() {
        let key = DEFAULT_MASTER_KEY;
        for (name, value) in [
            ("authorization", format!("Bearer {key}")),
            ("x-litellm-api-key", key.to_owned()),
            ("x-goog-api-key", key.to_owned()),
            ("x-api-key", key.to_owned()),
            ("api-key", key.to_owned()),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_static(name),
                value.parse().unwrap(),
            );
            assert!(authenticate(&h, key).is_ok(), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, key.parse().unwrap());
        assert_eq!(authenticate(&h, key).unwrap_err().status(), 401);
        assert_eq!(
            authenticate(&HeaderMap::new(), key).unwrap_err().status(),
            401
        );
    }
}

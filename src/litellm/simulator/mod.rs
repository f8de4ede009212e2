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
//!
//! The proxy's state ([`LiteLlmSimulator`], its teams, users and keys) lives
//! here; the endpoints by family in `teams`, `users`, `keys` and `models`,
//! their answers in `replies`, routing, authentication and fault injection in
//! `server`, the command line in `args`, what tests read in `views`.

use crate::simkit::{self, SimServer};
use anyhow::Context as _;
use axum::body::Bytes;
use axum::http::Uri;
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use crate::simkit::{parse_latency, Faults};

mod args;
mod keys;
mod models;
mod replies;
mod server;
mod teams;
mod users;
mod views;

use server::{handle, query_json};

pub use args::{parse_fail, parse_redirect, SimulatorArgs};
pub use views::{KeyView, SimStats, TeamMemberView, TeamView, UserView};

/// The master key the simulator accepts unless told otherwise.
pub const DEFAULT_MASTER_KEY: &str = "sk-orgkeeper-dev-master-key";

/// The user id the real proxy gives the master-key caller; `/team/new` adds it
/// to every team as an admin.
pub const CALLER_ADMIN_USER_ID: &str = "default_user_id";

/// The models the simulator serves unless told otherwise (`--models`).
pub const DEFAULT_MODELS: [&str; 1] = ["claude-sonnet-4-20250514"];

/// How many request bodies the simulator keeps per endpoint (the oldest go
/// first), so that a long `orgkeeper dev` session or a benchmark stays bounded.
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

const NOT_PREMIUM: &str = "Assigning team admins is a premium feature. You must be a LiteLLM Enterprise user to use this feature. If you have a license please set `LITELLM_LICENSE` in your env. Get a 7 day trial key here: https://www.litellm.ai/#trial. Pricing: https://www.litellm.ai/#pricing";

const BAD_GATEWAY_HTML: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

const UNAVAILABLE_HTML: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

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

    /// The keys `index` lists under `id` (a team's or a user's), oldest
    /// first, as `/team/info` and `/user/info` show them.
    fn keys_json_of(&self, index: &HashMap<String, HashSet<String>>, id: &str) -> Vec<Value> {
        index
            .get(id)
            .map(|set| {
                self.keys_sorted(set.iter())
                    .into_iter()
                    .map(|k| Self::key_json(k, true))
                    .collect()
            })
            .unwrap_or_default()
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

    /// Stops accepting, lets answers in flight finish (up to 5 s), then returns.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
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

//! An in-memory Stripe for tests and `orgkeeper dev`: the customer endpoints
//! the daemon uses, behaving like real Stripe where common fakes do not
//! (idempotency keys are honoured; `metadata[key]=` deletes the key), plus
//! fault injection so retries and idempotency can be tested.
//!
//! Endpoints (form-encoded bodies, JSON answers, `Authorization: Bearer`):
//!
//! | endpoint name | request |
//! |---|---|
//! | `create_customer` | `POST /v1/customers` |
//! | `update_customer` | `POST /v1/customers/{id}` |
//! | `get_customer` | `GET /v1/customers/{id}` |
//! | `list_customers` | `GET /v1/customers?email=&limit=&starting_after=` |
//! | `search_customers` | `GET /v1/customers/search?query=&limit=` |
//! | `delete_customer` | `DELETE /v1/customers/{id}` |
//!
//! Search understands Stripe's query language for customers as far as
//! orgkeeper needs it: clauses `metadata['key']:'value'`, `email:'…'`,
//! `name:'…'`, `phone:'…'`, `description:'…'` (exact matches; single or
//! double quotes, `\'`/`\"` escapes), joined by `AND` or by `OR` (not both,
//! as on Stripe). A malformed query, an unsupported field, a missing query or
//! a limit outside 1..=100 is a 400 `invalid_request_error` with `param`
//! `query`/`limit`. It answers `{"object": "search_result", "data": [...],
//! "has_more", "next_page": null, "url"}`, newest first. Unlike real Stripe,
//! whose search index lags writes by a few seconds (up to a minute during
//! outages), the simulator's search is immediately consistent unless
//! [`StripeSimulator::set_search_lag`] hides customers younger than a lag.
//! orgkeeper does not rely on search alone: the creating call's
//! `Idempotency-Key` (stable per outbox action) prevents a duplicate inside
//! that window, and search finds the customer after Stripe has forgotten the
//! key (24 hours).
//!
//! Idempotency, as Stripe documents it: a POST's `Idempotency-Key` stores
//! the first result (status and body) for 24 hours once the endpoint has
//! executed; the same key with the same parameters replays it with
//! `Idempotent-Replayed: true`, with different parameters answers 400
//! `idempotency_error`, and while the first request is still running a
//! second one answers 409. Requests refused before executing (injected
//! faults, authentication, parameter validation) store nothing.
//!
//! Faults are decided before authentication and idempotency (they stand for
//! the network and the infrastructure in front of Stripe): a `--fail` rule
//! for the endpoint, then a dropped connection, then a 500 `api_error`, none
//! of which acts. `--perform-then-502` is different: the first attempt of
//! each idempotency key is performed and stored, then answered 502, so the
//! client sees a failure for a change that happened — a retry with the same
//! key replays the stored result. Latency applies to every request.
//! Executed requests keep running when the client gives up (as on real
//! Stripe), so a timed-out request still takes effect.

use crate::simkit::{self, parse_fraction, parse_latency, pause, ConnHandle, SimServer};
use crate::stripe::client::Customer;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::distr::Alphanumeric;
use rand::RngExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::simkit::Faults;

/// The port `orgkeeper simulate stripe` listens on by default.
pub const DEFAULT_PORT: u16 = 12111;

/// The API key the simulator accepts unless told otherwise (a development
/// value, not a secret).
pub const DEFAULT_API_KEY: &str = "sk_test_orgkeeper_dev";

/// How long an idempotency key's result is kept (Stripe: 24 hours).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The endpoint names used by `--fail` and [`SimStats`].
pub const ENDPOINTS: [&str; 6] = [
    "create_customer",
    "update_customer",
    "get_customer",
    "list_customers",
    "search_customers",
    "delete_customer",
];

/// Most metadata keys a customer may carry (Stripe's limit).
const MAX_METADATA_KEYS: usize = 50;
/// Longest metadata key (Stripe's limit).
const MAX_METADATA_KEY_LEN: usize = 40;
/// Longest metadata value (Stripe's limit).
const MAX_METADATA_VALUE_LEN: usize = 500;

/// Command-line settings of the simulator (`orgkeeper simulate stripe`).
/// `Debug` masks the API key.
#[derive(Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Port to listen on at 127.0.0.1 (0 picks any free port).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The secret key clients must send (`Authorization: Bearer <key>`).
    #[arg(long, env = "STRIPE_API_KEY", default_value = DEFAULT_API_KEY, hide_env_values = true)]
    pub api_key: String,
    /// Fraction of requests (0 to 1) answered 500 `api_error` without acting.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Added latency per request in milliseconds: `N`, or `MIN..MAX` for a uniform pick.
    #[arg(long, default_value = "0", value_parser = parse_latency)]
    pub latency_ms: (u64, u64),
    /// Perform the first attempt of each idempotency key, then answer 502 (the response is "lost").
    #[arg(long)]
    pub perform_then_502: bool,
    /// Fraction of requests (0 to 1) whose connection is dropped without an answer (nothing is performed).
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_rate: f64,
    /// Always answer ENDPOINT with STATUS without acting, e.g. `update_customer=429`
    /// (endpoints: create_customer, update_customer, get_customer, list_customers,
    /// search_customers, delete_customer, or `*`). Repeatable.
    #[arg(long = "fail", value_name = "ENDPOINT=STATUS", value_parser = parse_fail)]
    pub fail: Vec<(String, u16)>,
}

impl fmt::Debug for SimulatorArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorArgs")
            .field("port", &self.port)
            .field("api_key", &mask_key(&self.api_key))
            .field("error_rate", &self.error_rate)
            .field("latency_ms", &self.latency_ms)
            .field("perform_then_502", &self.perform_then_502)
            .field("drop_rate", &self.drop_rate)
            .field("fail", &self.fail)
            .finish()
    }
}

impl SimulatorArgs {
    /// Settings for an in-process simulator: any free port, the default key, no faults.
    pub fn local() -> Self {
        SimulatorArgs {
            port: 0,
            api_key: DEFAULT_API_KEY.to_string(),
            error_rate: 0.0,
            latency_ms: (0, 0),
            perform_then_502: false,
            drop_rate: 0.0,
            fail: Vec::new(),
        }
    }

    /// The fault-injection part of these settings.
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

/// Parses `ENDPOINT=STATUS` for `--fail`: one of [`ENDPOINTS`], or `*` for every endpoint.
fn parse_fail(s: &str) -> Result<(String, u16), String> {
    let known: Vec<&str> = ENDPOINTS.into_iter().chain(["*"]).collect();
    simkit::parse_fail(s, &known)
}

/// What the simulator has seen, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Customers that exist and are not deleted.
    pub customers: usize,
    /// Responses sent, by endpoint name (see [`ENDPOINTS`]; `unknown` for
    /// unrecognized URLs) and HTTP status.
    pub requests: BTreeMap<(String, u16), u64>,
    /// POSTs answered from the idempotency store (`Idempotent-Replayed: true`).
    pub idempotent_replays: u64,
    /// Creates, updates and deletes actually performed (replays excluded,
    /// perform-then-502 attempts included).
    pub mutations: u64,
    /// Connections dropped by fault injection.
    pub dropped_connections: u64,
}

impl SimStats {
    /// Responses sent for `endpoint` with `status`.
    pub fn responses(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(&(endpoint.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    /// Responses sent for `endpoint`, any status.
    pub fn requests_to(&self, endpoint: &str) -> u64 {
        self.requests
            .iter()
            .filter(|((e, _), _)| e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A running simulator bound to 127.0.0.1. Dropping it stops the server;
/// [`shutdown`](Self::shutdown) also waits for it.
pub struct StripeSimulator {
    shared: Arc<Shared>,
    server: SimServer,
}

impl fmt::Debug for StripeSimulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeSimulator")
            .field("addr", &self.server.addr())
            .field("api_key", &mask_key(&self.shared.api_key))
            .finish()
    }
}

impl StripeSimulator {
    /// Starts a simulator on 127.0.0.1:`args.port` with `args`' key and faults.
    pub async fn start(args: &SimulatorArgs) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            api_key: args.api_key.clone(),
            inner: Mutex::new(Inner {
                faults: args.faults().normalized(),
                ..Inner::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = SimServer::start("Stripe", args.port, app).await?;
        Ok(StripeSimulator { shared, server })
    }

    /// Starts a simulator on any free port with [`DEFAULT_API_KEY`] and no faults.
    pub async fn start_local() -> io::Result<Self> {
        Self::start(&SimulatorArgs::local()).await
    }

    /// The base URL to give a [`StripeClient`](crate::stripe::StripeClient), e.g. `http://127.0.0.1:12111`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The API key the simulator accepts.
    pub fn api_key(&self) -> String {
        self.shared.api_key.clone()
    }

    /// Replaces the injected faults (applies to requests arriving from now on).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults.normalized();
    }

    /// Creates a customer directly (no request, not counted as a mutation),
    /// as data that existed before the test; returns its id.
    pub fn seed_customer(&self, email: Option<&str>, metadata: &[(&str, &str)]) -> String {
        let mut inner = self.shared.lock();
        let metadata = metadata
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        inner.insert_customer(None, email.map(str::to_owned), metadata, None, None)
    }

    /// The customer with this id, or `None` if it does not exist or was deleted.
    pub fn customer(&self, id: &str) -> Option<Customer> {
        let inner = self.shared.lock();
        inner
            .customers
            .get(id)
            .filter(|c| !c.deleted)
            .map(|c| c.customer.clone())
    }

    /// Every live customer, oldest first.
    pub fn customers(&self) -> Vec<Customer> {
        let inner = self.shared.lock();
        let mut all: Vec<&Stored> = inner.customers.values().filter(|c| !c.deleted).collect();
        all.sort_by_key(|c| c.seq);
        all.into_iter().map(|c| c.customer.clone()).collect()
    }

    /// Deletes a customer directly, as someone in the Stripe dashboard
    /// would; returns false if there was no live customer with this id.
    pub fn delete_customer(&self, id: &str) -> bool {
        let mut inner = self.shared.lock();
        match inner.customers.get_mut(id) {
            Some(c) if !c.deleted => {
                c.deleted = true;
                true
            }
            _ => false,
        }
    }

    /// Makes search miss customers created less than `lag` ago, as real
    /// Stripe's eventually consistent search index does for a few seconds
    /// (`Duration::ZERO`, the default: immediately consistent).
    pub fn set_search_lag(&self, lag: Duration) {
        self.shared.lock().search_lag = lag;
    }

    /// Forgets every stored idempotency result, as 24 hours passing would
    /// (requests still in flight keep their keys).
    pub fn expire_idempotency_keys(&self) {
        self.shared
            .lock()
            .idempotency
            .retain(|_, e| matches!(e, IdemEntry::InFlight));
    }

    /// Counters for assertions.
    pub fn stats(&self) -> SimStats {
        let inner = self.shared.lock();
        let mut stats = inner.stats.clone();
        stats.customers = inner.customers.values().filter(|c| !c.deleted).count();
        stats
    }

    /// Stops accepting requests and waits (at most 5 s) for open connections to finish.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// Runs a simulator until Ctrl-C (or SIGTERM), printing where it listens.
pub async fn serve_forever(args: SimulatorArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let sim = StripeSimulator::start(&args)
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    println!("Stripe simulator listening on {}", sim.base_url());
    println!("  STRIPE_BASE_URL={}", sim.base_url());
    if args.api_key == DEFAULT_API_KEY {
        println!("  API key: the default development key (see --help)");
    } else {
        println!("  API key: the one given by --api-key / STRIPE_API_KEY");
    }
    let faults = args.faults();
    if faults.error_rate > 0.0
        || faults.latency_ms != (0, 0)
        || faults.perform_then_502
        || faults.drop_rate > 0.0
        || !faults.fail.is_empty()
    {
        println!("  faults: {faults:?}");
    }
    simkit::serve_until_signal(sim.server, "Stripe simulator stopping").await
}

// ---------------------------------------------------------------------------
// State

/// What every handler shares; the mutex is held briefly and never across an await.
struct Shared {
    api_key: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a response and returns it.
    fn finish(&self, endpoint: Endpoint, response: Response) -> Response {
        let mut inner = self.lock();
        *inner
            .stats
            .requests
            .entry((endpoint.name().to_string(), response.status().as_u16()))
            .or_default() += 1;
        response
    }
}

#[derive(Default)]
struct Inner {
    faults: Faults,
    customers: HashMap<String, Stored>,
    next_seq: u64,
    idempotency: HashMap<String, IdemEntry>,
    stats: SimStats,
    /// Search does not see customers younger than this.
    search_lag: Duration,
}

struct Stored {
    customer: Customer,
    description: Option<String>,
    phone: Option<String>,
    created: u64,
    seq: u64,
    /// When it was created, for the search lag.
    born: Instant,
    invoice_prefix: String,
    deleted: bool,
}

impl Stored {
    fn to_json(&self) -> Value {
        if self.deleted {
            return json!({"id": self.customer.id, "object": "customer", "deleted": true});
        }
        json!({
            "id": self.customer.id,
            "object": "customer",
            "address": null,
            "balance": 0,
            "created": self.created,
            "currency": null,
            "default_source": null,
            "delinquent": false,
            "description": self.description,
            "discount": null,
            "email": self.customer.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null
            },
            "livemode": false,
            "metadata": self.customer.metadata,
            "name": self.customer.name,
            "next_invoice_sequence": 1,
            "phone": self.phone,
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null
        })
    }
}

enum IdemEntry {
    /// The first request with this key is executing (a second one gets 409,
    /// whatever its parameters).
    InFlight,
    /// The first request executed; its answer is replayed until `expires`.
    Done {
        fingerprint: String,
        expires: Instant,
        status: u16,
        body: String,
        request_id: String,
    },
}

impl Inner {
    fn insert_customer(
        &mut self,
        name: Option<String>,
        email: Option<String>,
        metadata: BTreeMap<String, String>,
        description: Option<String>,
        phone: Option<String>,
    ) -> String {
        let id = loop {
            let id = random_id("cus_", 14);
            if !self.customers.contains_key(&id) {
                break id;
            }
        };
        self.next_seq += 1;
        let stored = Stored {
            customer: Customer {
                id: id.clone(),
                email,
                name,
                metadata,
            },
            description,
            phone,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            seq: self.next_seq,
            born: Instant::now(),
            invoice_prefix: random_id("", 8).to_ascii_uppercase(),
            deleted: false,
        };
        self.customers.insert(id.clone(), stored);
        id
    }

    /// Looks up or reserves an idempotency key.
    fn reserve(&mut self, key: &str, fingerprint: &str) -> Reservation {
        let now = Instant::now();
        if let Some(IdemEntry::Done { expires, .. }) = self.idempotency.get(key) {
            if *expires <= now {
                self.idempotency.remove(key);
            }
        }
        match self.idempotency.get(key) {
            Some(IdemEntry::InFlight) => Reservation::InFlight,
            Some(IdemEntry::Done {
                fingerprint: stored,
                status,
                body,
                request_id,
                ..
            }) => {
                if stored == fingerprint {
                    Reservation::Replay {
                        status: *status,
                        body: body.clone(),
                        original_request: request_id.clone(),
                    }
                } else {
                    Reservation::Mismatch
                }
            }
            None => {
                if self.idempotency.len() >= 10_000 {
                    self.idempotency.retain(|_, e| match e {
                        IdemEntry::Done { expires, .. } => *expires > now,
                        IdemEntry::InFlight => true,
                    });
                }
                self.idempotency
                    .insert(key.to_string(), IdemEntry::InFlight);
                Reservation::Reserved
            }
        }
    }
}

enum Reservation {
    Reserved,
    InFlight,
    Mismatch,
    Replay {
        status: u16,
        body: String,
        original_request: String,
    },
}

/// Releases an idempotency reservation that was not completed (an early
/// return or a panic), so that the key does not stay "in use" forever.
struct ReservationGuard {
    shared: Arc<Shared>,
    key: Option<String>,
}

impl ReservationGuard {
    /// Stores the executed result under the key.
    fn complete(mut self, fingerprint: String, status: u16, body: String, request_id: String) {
        if let Some(key) = self.key.take() {
            self.shared.lock().idempotency.insert(
                key,
                IdemEntry::Done {
                    fingerprint,
                    expires: Instant::now() + IDEMPOTENCY_TTL,
                    status,
                    body,
                    request_id,
                },
            );
        }
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut inner = self.shared.lock();
            if matches!(inner.idempotency.get(&key), Some(IdemEntry::InFlight)) {
                inner.idempotency.remove(&key);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Requests

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Create,
    Update,
    Get,
    List,
    Search,
    Delete,
    Unknown,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Create => "create_customer",
            Endpoint::Update => "update_customer",
            Endpoint::Get => "get_customer",
            Endpoint::List => "list_customers",
            Endpoint::Search => "search_customers",
            Endpoint::Delete => "delete_customer",
            Endpoint::Unknown => "unknown",
        }
    }
}

/// Maps a request to an endpoint and, for `/v1/customers/{id}`, the id.
fn route(method: &Method, path: &str) -> (Endpoint, Option<String>) {
    let path = path.trim_end_matches('/');
    if path == "/v1/customers/search" {
        return match *method {
            Method::GET => (Endpoint::Search, None),
            _ => (Endpoint::Unknown, None),
        };
    }
    if path == "/v1/customers" {
        return match *method {
            Method::POST => (Endpoint::Create, None),
            Method::GET => (Endpoint::List, None),
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
                Method::POST => (Endpoint::Update, id),
                Method::GET => (Endpoint::Get, id),
                Method::DELETE => (Endpoint::Delete, id),
                _ => (Endpoint::Unknown, None),
            };
        }
    }
    (Endpoint::Unknown, None)
}

/// The single entry point: faults, authentication, parameters, idempotency,
/// then the endpoint itself.
async fn handle(
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

/// The result of running an endpoint. `executed` is false when the request
/// was refused before acting (parameter validation), which stores nothing
/// under its idempotency key.
struct Outcome {
    status: StatusCode,
    body: Value,
    executed: bool,
}

impl Outcome {
    fn ok(body: Value) -> Self {
        Outcome {
            status: StatusCode::OK,
            body,
            executed: true,
        }
    }

    fn invalid(message: String, param: Option<&str>, code: Option<&str>) -> Self {
        let mut error = json!({"type": "invalid_request_error", "message": message});
        if let Some(param) = param {
            error["param"] = json!(param);
        }
        if let Some(code) = code {
            error["code"] = json!(code);
        }
        Outcome {
            status: StatusCode::BAD_REQUEST,
            body: json!({ "error": error }),
            executed: false,
        }
    }

    fn missing(id: &str) -> Self {
        Outcome {
            status: StatusCode::NOT_FOUND,
            body: json!({"error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "param": "id",
                "message": format!("No such customer: '{id}'"),
                "doc_url": "https://stripe.com/docs/error-codes/resource-missing"
            }}),
            executed: true,
        }
    }
}

fn execute(
    inner: &mut Inner,
    endpoint: Endpoint,
    id: Option<&str>,
    params: &[(String, String)],
) -> Outcome {
    let id = id.unwrap_or_default();
    match endpoint {
        Endpoint::Create => {
            let changes = match CustomerChanges::parse(params) {
                Ok(c) => c,
                Err(o) => return o,
            };
            let mut metadata = BTreeMap::new();
            if let Err(o) = changes.apply_metadata(&mut metadata) {
                return o;
            }
            let empty_is_none = |v: Option<String>| v.filter(|s| !s.is_empty());
            let new_id = inner.insert_customer(
                empty_is_none(changes.name),
                empty_is_none(changes.email),
                metadata,
                empty_is_none(changes.description),
                empty_is_none(changes.phone),
            );
            inner.stats.mutations += 1;
            Outcome::ok(inner.customers[&new_id].to_json())
        }
        Endpoint::Update => {
            let changes = match CustomerChanges::parse(params) {
                Ok(c) => c,
                Err(o) => return o,
            };
            let Some(stored) = inner.customers.get_mut(id).filter(|c| !c.deleted) else {
                return Outcome::missing(id);
            };
            let mut metadata = stored.customer.metadata.clone();
            if let Err(o) = changes.apply_metadata(&mut metadata) {
                return o;
            }
            stored.customer.metadata = metadata;
            let set = |field: &mut Option<String>, value: Option<String>| {
                if let Some(v) = value {
                    *field = (!v.is_empty()).then_some(v);
                }
            };
            set(&mut stored.customer.name, changes.name);
            set(&mut stored.customer.email, changes.email);
            set(&mut stored.description, changes.description);
            set(&mut stored.phone, changes.phone);
            let body = stored.to_json();
            inner.stats.mutations += 1;
            Outcome::ok(body)
        }
        Endpoint::Get => {
            if let Some(o) = unknown_param(params, &[]) {
                return o;
            }
            match inner.customers.get(id) {
                Some(stored) => Outcome::ok(stored.to_json()),
                None => Outcome::missing(id),
            }
        }
        Endpoint::Delete => match inner.customers.get_mut(id).filter(|c| !c.deleted) {
            Some(stored) => {
                stored.deleted = true;
                inner.stats.mutations += 1;
                Outcome::ok(json!({"id": id, "object": "customer", "deleted": true}))
            }
            None => Outcome::missing(id),
        },
        Endpoint::List => list(inner, params),
        Endpoint::Search => search(inner, params),
        Endpoint::Unknown => Outcome::invalid("Unrecognized request URL.".into(), None, None),
    }
}

fn list(inner: &Inner, params: &[(String, String)]) -> Outcome {
    if let Some(o) = unknown_param(params, &["email", "limit", "starting_after"]) {
        return o;
    }
    let get = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit") {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Outcome::invalid(
                    format!("Invalid integer: {s}; limit must be between 1 and 100."),
                    Some("limit"),
                    None,
                )
            }
        },
    };
    let email = get("email");
    let mut matching: Vec<&Stored> = inner
        .customers
        .values()
        .filter(|c| !c.deleted)
        .filter(|c| email.is_none_or(|e| c.customer.email.as_deref() == Some(e)))
        .collect();
    // Newest first, as Stripe lists.
    matching.sort_by_key(|c| std::cmp::Reverse((c.created, c.seq)));
    if let Some(after) = get("starting_after") {
        match matching.iter().position(|c| c.customer.id == after) {
            Some(i) => {
                matching.drain(..=i);
            }
            None => {
                return Outcome::invalid(
                    format!("No such customer: '{after}'"),
                    Some("starting_after"),
                    Some("resource_missing"),
                )
            }
        }
    }
    let has_more = matching.len() > limit;
    let data: Vec<Value> = matching.iter().take(limit).map(|c| c.to_json()).collect();
    Outcome::ok(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "url": "/v1/customers"
    }))
}

fn search(inner: &Inner, params: &[(String, String)]) -> Outcome {
    if let Some(o) = unknown_param(params, &["query", "limit", "page"]) {
        return o;
    }
    let get = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(query) = get("query") else {
        return Outcome::invalid(
            "Missing required param: query.".into(),
            Some("query"),
            Some("parameter_missing"),
        );
    };
    let limit = match get("limit") {
        None => 10,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Outcome::invalid(
                    format!("Invalid integer: {s}; limit must be between 1 and 100."),
                    Some("limit"),
                    None,
                )
            }
        },
    };
    if let Some(page) = get("page") {
        return Outcome::invalid(
            format!("Invalid page: {page:?} is not a page this search returned."),
            Some("page"),
            None,
        );
    }
    let query = match SearchQuery::parse(query) {
        Ok(q) => q,
        Err(problem) => {
            return Outcome::invalid(
                format!("Invalid search query {query:?}: {problem}. Customer search clauses look like metadata['key']:'value' or email:'value', joined by AND or OR."),
                Some("query"),
                None,
            )
        }
    };
    let now = Instant::now();
    let mut matching: Vec<&Stored> = inner
        .customers
        .values()
        .filter(|c| !c.deleted)
        .filter(|c| now.duration_since(c.born) >= inner.search_lag)
        .filter(|c| query.matches(c))
        .collect();
    matching.sort_by_key(|c| std::cmp::Reverse((c.created, c.seq)));
    let has_more = matching.len() > limit;
    let data: Vec<Value> = matching.iter().take(limit).map(|c| c.to_json()).collect();
    Outcome::ok(json!({
        "object": "search_result",
        "data": data,
        "has_more": has_more,
        "next_page": null,
        "url": "/v1/customers/search"
    }))
}

/// A parsed customer search query: clauses joined by one operator.
#[derive(Debug, PartialEq, Eq)]
struct SearchQuery {
    clauses: Vec<(SearchField, String)>,
    /// `true`: every clause must match (`AND`, or a single clause); `false`: any (`OR`).
    all: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum SearchField {
    Metadata(String),
    Email,
    Name,
    Phone,
    Description,
}

impl SearchQuery {
    fn parse(query: &str) -> Result<Self, String> {
        let mut rest = query.trim();
        if rest.is_empty() {
            return Err("the query is empty".into());
        }
        let mut clauses = Vec::new();
        let mut operator: Option<&str> = None;
        loop {
            let (field, after_field) = parse_search_field(rest)?;
            let after_colon = after_field
                .strip_prefix(':')
                .ok_or_else(|| format!("expected ':' after the field at {after_field:?} (only exact matches are supported)"))?;
            let (value, after_value) = parse_quoted(after_colon)?;
            clauses.push((field, value));
            rest = after_value.trim_start();
            if rest.is_empty() {
                break;
            }
            let (op, after_op) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("expected AND or OR at {rest:?}"))?;
            if op != "AND" && op != "OR" {
                return Err(format!("expected AND or OR at {rest:?}"));
            }
            match operator {
                Some(previous) if previous != op => {
                    return Err("a query cannot mix AND and OR".into())
                }
                _ => operator = Some(op),
            }
            rest = after_op.trim_start();
        }
        Ok(SearchQuery {
            clauses,
            all: operator != Some("OR"),
        })
    }

    fn matches(&self, c: &Stored) -> bool {
        let one = |(field, value): &(SearchField, String)| {
            let actual = match field {
                SearchField::Metadata(key) => c.customer.metadata.get(key),
                SearchField::Email => c.customer.email.as_ref(),
                SearchField::Name => c.customer.name.as_ref(),
                SearchField::Phone => c.phone.as_ref(),
                SearchField::Description => c.description.as_ref(),
            };
            actual == Some(value)
        };
        if self.all {
            self.clauses.iter().all(one)
        } else {
            self.clauses.iter().any(one)
        }
    }
}

/// A field at the start of `s`: `metadata['key']` (or `["key"]`) or a plain field name.
fn parse_search_field(s: &str) -> Result<(SearchField, &str), String> {
    if let Some(after) = s.strip_prefix("metadata[") {
        let (key, after_key) = parse_quoted(after)?;
        let rest = after_key
            .strip_prefix(']')
            .ok_or_else(|| format!("expected ']' after the metadata key at {after_key:?}"))?;
        if key.is_empty() {
            return Err("the metadata key is empty".into());
        }
        return Ok((SearchField::Metadata(key), rest));
    }
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    let field = match name {
        "email" => SearchField::Email,
        "name" => SearchField::Name,
        "phone" => SearchField::Phone,
        "description" => SearchField::Description,
        "" => return Err(format!("expected a field at {s:?}")),
        other => {
            return Err(format!(
            "field {other:?} is not supported (metadata['key'], email, name, phone, description)"
        ))
        }
    };
    Ok((field, rest))
}

/// A `'…'` or `"…"` string at the start of `s` (a backslash escapes the
/// next character); returns it unescaped and what follows.
fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        _ => return Err(format!("expected a quoted value at {s:?}")),
    };
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            value.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Ok((value, &s[i + c.len_utf8()..]));
        } else {
            value.push(c);
        }
    }
    Err(format!("unterminated string in {s:?}"))
}

/// A 400 for the first parameter that is not in `allowed` (`expand[]` is always allowed).
fn unknown_param(params: &[(String, String)], allowed: &[&str]) -> Option<Outcome> {
    params
        .iter()
        .find(|(k, _)| !allowed.contains(&k.as_str()) && !k.starts_with("expand["))
        .map(|(k, _)| {
            Outcome::invalid(
                format!("Received unknown parameter: {k}"),
                Some(k),
                Some("parameter_unknown"),
            )
        })
}

/// The parameters of a create or update.
#[derive(Default)]
struct CustomerChanges {
    name: Option<String>,
    email: Option<String>,
    description: Option<String>,
    phone: Option<String>,
    /// `metadata=` (empty): remove every key first.
    clear_metadata: bool,
    /// `metadata[k]=v` in order; an empty `v` removes `k`.
    metadata: Vec<(String, String)>,
}

impl CustomerChanges {
    fn parse(params: &[(String, String)]) -> Result<Self, Outcome> {
        let mut changes = CustomerChanges::default();
        for (k, v) in params {
            match k.as_str() {
                "name" => changes.name = Some(v.clone()),
                "email" => {
                    if v.len() > 512 {
                        return Err(Outcome::invalid(
                            "Invalid email: must be at most 512 characters.".into(),
                            Some("email"),
                            None,
                        ));
                    }
                    changes.email = Some(v.clone())
                }
                "description" => changes.description = Some(v.clone()),
                "phone" => changes.phone = Some(v.clone()),
                "metadata" if v.is_empty() => {
                    changes.clear_metadata = true;
                    changes.metadata.clear();
                }
                _ if k.starts_with("expand[") => {}
                _ => match k
                    .strip_prefix("metadata[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    Some(key) if !key.is_empty() && !key.contains(['[', ']']) => {
                        changes.metadata.push((key.to_string(), v.clone()))
                    }
                    _ => {
                        return Err(Outcome::invalid(
                            format!("Received unknown parameter: {k}"),
                            Some(k),
                            Some("parameter_unknown"),
                        ))
                    }
                },
            }
        }
        Ok(changes)
    }

    /// Applies the metadata changes to `metadata`, or refuses them (Stripe's limits).
    fn apply_metadata(&self, metadata: &mut BTreeMap<String, String>) -> Result<(), Outcome> {
        if self.clear_metadata {
            metadata.clear();
        }
        for (k, v) in &self.metadata {
            if k.chars().count() > MAX_METADATA_KEY_LEN {
                return Err(Outcome::invalid(
                    format!("Metadata keys can have up to {MAX_METADATA_KEY_LEN} characters: {k}"),
                    Some(&format!("metadata[{k}]")),
                    None,
                ));
            }
            if v.chars().count() > MAX_METADATA_VALUE_LEN {
                return Err(Outcome::invalid(
                    format!("Metadata values can have up to {MAX_METADATA_VALUE_LEN} characters."),
                    Some(&format!("metadata[{k}]")),
                    None,
                ));
            }
            if v.is_empty() {
                metadata.remove(k);
            } else {
                metadata.insert(k.clone(), v.clone());
            }
        }
        if metadata.len() > MAX_METADATA_KEYS {
            return Err(Outcome::invalid(
                format!("Metadata can have up to {MAX_METADATA_KEYS} keys."),
                Some("metadata"),
                None,
            ));
        }
        Ok(())
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
fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
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
fn mask_key(key: &str) -> String {
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

fn random_id(prefix: &str, len: usize) -> String {
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
    fn flags_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_fail("update_customer=429"),
            Ok(("update_customer".into(), 429))
        );
        assert_eq!(parse_fail("*=503"), Ok(("*".into(), 503)));
        assert!(parse_fail("update=429").is_err());
        assert!(parse_fail("get_customer=200").is_err());
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
    fn metadata_changes_follow_stripe() {
        let params = parse_urlencoded("metadata[a]=1&metadata[b]=&metadata[c]=3");
        let changes = CustomerChanges::parse(&params).ok().unwrap();
        let mut md = BTreeMap::from([
            ("b".to_string(), "old".to_string()),
            ("d".to_string(), "4".to_string()),
        ]);
        changes.apply_metadata(&mut md).ok().unwrap();
        assert_eq!(md.keys().collect::<Vec<_>>(), ["a", "c", "d"]);
        let clear = CustomerChanges::parse(&parse_urlencoded("metadata=&metadata[x]=1"))
            .ok()
            .unwrap();
        clear.apply_metadata(&mut md).ok().unwrap();
        assert_eq!(md.keys().collect::<Vec<_>>(), ["x"]);
        assert!(CustomerChanges::parse(&parse_urlencoded("nmae=typo")).is_err());
    }

    #[test]
    fn search_queries_parse_like_stripes() {
        let q = SearchQuery::parse("metadata['org_id']:'o-1'").unwrap();
        assert_eq!(
            q.clauses,
            vec![(SearchField::Metadata("org_id".into()), "o-1".into())]
        );
        let q = SearchQuery::parse(r#"metadata["a"]:"x\"y" OR email:'e@x.io'"#).unwrap();
        assert!(!q.all);
        assert_eq!(q.clauses[0].1, "x\"y");
        assert_eq!(q.clauses[1], (SearchField::Email, "e@x.io".into()));
        for bad in [
            "",
            "metadata['org_id']:o-1",
            "metadata['org_id']'o-1'",
            "metadata['org_id':'o-1'",
            "metadata['org_id']:'o-1",
            "created>10",
            "email:'a' AND name:'b' OR phone:'c'",
            "email:'a' and name:'b'",
            "email:'a' name:'b'",
        ] {
            assert!(SearchQuery::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&Method::POST, "/v1/customers").0, Endpoint::Create);
        assert_eq!(route(&Method::GET, "/v1/customers").0, Endpoint::List);
        assert_eq!(
            route(&Method::GET, "/v1/customers/search").0,
            Endpoint::Search
        );
        assert_eq!(
            route(&Method::POST, "/v1/customers/search").0,
            Endpoint::Unknown
        );
        assert_eq!(
            route(&Method::POST, "/v1/customers/cus_1"),
            (Endpoint::Update, Some("cus_1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/v1/customers/cus_1").0,
            Endpoint::Delete
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

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
//!
//! The simulator's state and public API live here; the customer endpoints in
//! `customers` (search's query language in `search`), the idempotency store
//! in `idempotency`, routing, faults and authentication in `server`, the
//! command line in `args`.

use crate::simkit::{self, SimServer};
use crate::stripe::client::Customer;
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::simkit::Faults;

mod args;
mod customers;
mod idempotency;
mod search;
mod server;

pub use args::SimulatorArgs;

use server::{handle, mask_key, random_id, Endpoint};

/// The port `orgkeeper simulate stripe` listens on by default.
pub const DEFAULT_PORT: u16 = 12111;

/// The API key the simulator accepts unless told otherwise (a development
/// value, not a secret).
pub const DEFAULT_API_KEY: &str = "sk_test_orgkeeper_dev";

/// How long an idempotency key's result is kept (Stripe: 24 hours).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Most metadata keys a customer may carry (Stripe's limit).
const MAX_METADATA_KEYS: usize = 50;
/// Longest metadata key (Stripe's limit).
const MAX_METADATA_KEY_LEN: usize = 40;
/// Longest metadata value (Stripe's limit).
const MAX_METADATA_VALUE_LEN: usize = 500;
/// What the simulator has seen, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Customers that exist and are not deleted.
    pub customers: usize,
    /// Responses sent, by endpoint name (see [`Call`](crate::stripe::Call); `unknown` for
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
}

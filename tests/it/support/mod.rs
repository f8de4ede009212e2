//! The test harness: a PostgreSQL server (the one in `DATABASE_URL`, or a
//! private throwaway cluster started once per test run), a template
//! database migrated once, and a fresh clone of it for every test so tests
//! run in parallel and start clean.

pub mod pooler;

use orgkeeper::pgcluster::{Durability, PgCluster};
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::OnceLock;
use uuid::Uuid;

struct Server {
    admin_url: String,
    template: String,
    _cluster: Option<PgCluster>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// Runs async set-up code to completion from any context (tests run inside
/// their own runtimes, which must not be blocked on from the inside).
fn block_on_thread<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(f)
        .join()
        .expect("set-up thread panicked")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        block_on_thread(|| {
            let (admin_url, cluster) = match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => (url, None),
                _ => {
                    let cluster = PgCluster::start(Durability::Throwaway)?;
                    cluster.stop_when_process_exits(std::process::id())?;
                    (cluster.url("postgres"), Some(cluster))
                }
            };
            let template = runtime().block_on(ensure_template(&admin_url))?;
            Ok(Server {
                admin_url,
                template,
                _cluster: cluster,
            })
        })
        .expect("test database server")
    })
}

/// Creates the migrated template database once per schema version (and
/// drops the templates of other schemas that no run is using); test runs at
/// once coordinate through an advisory lock.
async fn ensure_template(admin_url: &str) -> anyhow::Result<String> {
    let template = format!(
        "orgkeeper_tpl_{}",
        &orgkeeper::db::schema_fingerprint()[..16]
    );
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query("SELECT pg_advisory_lock(7426001)")
        .execute(&mut admin)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let building = format!("{template}_building");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {building}"
        )))
        .execute(&mut admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut admin)
            .await?;
        orgkeeper::db::migrate(&with_database(admin_url, &building)).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {template}"
        )))
        .execute(&mut admin)
        .await?;
        // Templates of other schemas are of no further use unless a
        // concurrent run (another checkout or branch) still clones them:
        // such a run holds its template's lock (hold_template).
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database
              WHERE datname LIKE 'orgkeeper\\_tpl\\_%' AND datname <> $1",
        )
        .bind(&template)
        .fetch_all(&mut admin)
        .await?;
        for name in stale {
            let unused: bool = sqlx::query_scalar(TRY_LOCK_TEMPLATE)
                .bind(&name)
                .fetch_one(&mut admin)
                .await?;
            if unused {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\"")))
                    .execute(&mut admin)
                    .await;
                sqlx::query(UNLOCK_TEMPLATE)
                    .bind(&name)
                    .execute(&mut admin)
                    .await?;
            }
        }
    }
    hold_template(admin_url, &template)?;
    sqlx::query("SELECT pg_advisory_unlock(7426001)")
        .execute(&mut admin)
        .await?;
    Ok(template)
}

const HOLD_TEMPLATE: &str = "SELECT pg_advisory_lock_shared(7426002, hashtext($1))";
const TRY_LOCK_TEMPLATE: &str = "SELECT pg_try_advisory_lock(7426002, hashtext($1))";
const UNLOCK_TEMPLATE: &str = "SELECT pg_advisory_unlock(7426002, hashtext($1))";

/// Holds a shared lock on `template`'s name for the rest of this process,
/// from a connection on a thread of its own, so that a concurrent run of
/// another schema does not drop the template while this run clones it.
fn hold_template(admin_url: &str, template: &str) -> anyhow::Result<()> {
    let (url, name) = (admin_url.to_string(), template.to_string());
    let (held, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let lock = async {
                let mut conn = PgConnection::connect(&url).await?;
                sqlx::query(HOLD_TEMPLATE)
                    .bind(&name)
                    .execute(&mut conn)
                    .await?;
                anyhow::Ok(conn)
            };
            match lock.await {
                Ok(_conn) => {
                    let _ = held.send(Ok(()));
                    std::future::pending::<()>().await
                }
                Err(e) => {
                    let _ = held.send(Err(e));
                }
            }
        })
    });
    wait.recv()?
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// A database of one test, dropped when the test ends.
pub struct TestDb {
    /// Connection URL of this test's database.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    /// A fresh clone of the migrated template.
    pub async fn migrated() -> TestDb {
        Self::create(Some(&server().template)).await
    }

    /// A fresh database without the orgkeeper schema.
    pub async fn empty() -> TestDb {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> TestDb {
        let server = server();
        let name = format!("orgkeeper_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .expect("admin connection");
        let from = template
            .map(|t| format!(" TEMPLATE {t}"))
            .unwrap_or_else(|| " TEMPLATE template0".into());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}{from}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = with_database(&server.admin_url, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .expect("test pool");
        TestDb { url, pool, name }
    }

    /// A new single connection to this database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connection")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = server().admin_url.clone();
        let name = self.name.clone();
        // Connections still open are ended by FORCE; closing the pool here
        // would need the test's runtime, which this drop is blocking.
        let _ = std::thread::spawn(move || {
            runtime().block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            })
        })
        .join();
    }
}

/// The SQLSTATE and message of a database error, for asserting refusals.
pub fn db_error(err: &sqlx::Error) -> (String, String) {
    match err {
        sqlx::Error::Database(e) => (
            e.code().map(|c| c.to_string()).unwrap_or_default(),
            e.message().to_string(),
        ),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// The hint of a database error, if it has one.
pub fn hint(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|e| e.hint())
        .map(str::to_string)
}

/// Asserts that `err` is the database refusing with `sqlstate` and a message
/// containing every fragment. Returns the message.
#[track_caller]
pub fn assert_refusal(err: &sqlx::Error, sqlstate: &str, fragments: &[&str]) -> String {
    let (code, message) = db_error(err);
    assert_eq!(code, sqlstate, "SQLSTATE of: {message}");
    for f in fragments {
        assert!(
            message.contains(f),
            "message {message:?} should contain {f:?}"
        );
    }
    message
}

/// Asserts a refusal: its SQLSTATE, that its message contains every fragment,
/// and that it says what to do next. Returns the hint.
#[track_caller]
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, sqlx::Error>,
    sqlstate: &str,
    fragments: &[&str],
) -> String {
    let err = result.expect_err("the call must be refused");
    let message = assert_refusal(&err, sqlstate, fragments);
    let hint = hint(&err).unwrap_or_default();
    assert!(!hint.is_empty(), "refusal {message:?} has no hint");
    hint
}

/// A daemon running in this process, against a test database and simulators.
pub struct TestDaemon {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Settings for daemons under test: quick polls and retries, short leases.
pub fn daemon_settings(
    worker: &str,
    lease: std::time::Duration,
) -> orgkeeper::config::DaemonSettings {
    orgkeeper::config::DaemonSettings {
        concurrency: 16,
        lease,
        poll: std::time::Duration::from_millis(100),
        max_attempts: 8,
        retry: orgkeeper::outbox::RetryPolicy {
            base: std::time::Duration::from_millis(20),
            max: std::time::Duration::from_millis(300),
        },
        shutdown_grace: std::time::Duration::from_secs(5),
        action_timeout: std::time::Duration::from_secs(30),
        worker_id: worker.to_string(),
        metrics_addr: None,
    }
}

/// A daemon configuration pointing at `db` and the LiteLLM simulator.
pub fn daemon_config(
    db_url: &str,
    litellm: &orgkeeper::litellm::LiteLlmSimulator,
    secret_key: &secrecy::SecretString,
    daemon: orgkeeper::config::DaemonSettings,
) -> orgkeeper::commands::listen::DaemonConfig {
    orgkeeper::commands::listen::DaemonConfig {
        database_url: db_url.to_string(),
        listen_database_url: None,
        litellm: orgkeeper::config::LiteLlmSettings {
            client: orgkeeper::litellm::LiteLlmConfig {
                base_url: litellm.base_url(),
                master_key: secrecy::SecretString::from(litellm.master_key()),
                auth_header: "x-goog-api-key".into(),
                timeout: std::time::Duration::from_secs(10),
            },
            provisioning: orgkeeper::config::ProvisioningDefaults {
                model: Some("litellm_proxy/test-model".into()),
                allowed_models: Vec::new(),
                llm_base_url: litellm.base_url(),
                team_max_budget: None,
                key_alias_prefix: "OpenHands Cloud".into(),
                legacy_team_id: None,
            },
        },
        stripe: None,
        keyring: orgkeeper::secrets::Keyring::new(secret_key, &[], None).expect("keyring"),
        daemon,
    }
}

impl TestDaemon {
    /// Starts a daemon task with `config`.
    pub fn start(config: orgkeeper::commands::listen::DaemonConfig) -> TestDaemon {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(orgkeeper::commands::listen::run(config, shutdown));
        TestDaemon { stop, handle }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.handle.await.expect("daemon task").expect("daemon run");
    }

    /// Abrupt stop, as a crash: in-flight work is abandoned with its lease held.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Polls `check` every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until a session of this test's database whose statement contains
/// `statement` waits for a lock; panics with `what` after `timeout`.
pub async fn wait_for_lock_wait(
    pool: &PgPool,
    timeout: std::time::Duration,
    what: &str,
    statement: &str,
) {
    wait_until(timeout, what, || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE datname = current_database() AND wait_event_type = 'Lock'
                               AND strpos(query, $1) > 0)",
        )
        .bind(statement)
        .fetch_one(pool)
        .await
        .unwrap()
    })
    .await;
}

/// Number of orgs per provisioning status.
pub async fn status_counts(pool: &PgPool) -> std::collections::BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT provisioning_status, count(*) FROM orgkeeper.org GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Inserts `n` organizations, each with its own new owner (users row first,
/// in the same statement), as an application would.
pub async fn insert_orgs(pool: &PgPool, prefix: &str, n: usize) -> Vec<Uuid> {
    sqlx::query_scalar(
        "WITH u AS (INSERT INTO orgkeeper.users (id) SELECT gen_random_uuid() FROM generate_series(1, $2) RETURNING id),
              n AS (SELECT u.id, row_number() OVER (ORDER BY u.id) AS g FROM u)
         INSERT INTO orgkeeper.org (name, created_by) SELECT $1 || ' ' || n.g, n.id FROM n ORDER BY n.g RETURNING id",
    )
    .bind(prefix)
    .bind(n as i32)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A connection acting as the application for `user`.
pub async fn app(db: &TestDb, user: Option<Uuid>) -> PgConnection {
    app_at(db, user, "READ COMMITTED").await
}

/// A connection acting as the application for `user` whose transactions
/// (implicit ones included) run at isolation `level`.
pub async fn app_at(db: &TestDb, user: Option<Uuid>, level: &str) -> PgConnection {
    let mut conn = db.connect().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET default_transaction_isolation = '{level}'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let effective: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(effective, level.to_lowercase());
    sqlx::query("SET ROLE orgkeeper_app")
        .execute(&mut conn)
        .await
        .unwrap();
    if let Some(user) = user {
        sqlx::query("SELECT set_config('orgkeeper.user_id', $1, false)")
            .bind(user.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn
}

/// Begins a transaction at isolation `level` on `conn` and takes its
/// snapshot (a read of the memberships), so that what other sessions
/// commit afterwards stays invisible at REPEATABLE READ and SERIALIZABLE.
pub async fn begin_with_snapshot(conn: &mut PgConnection, level: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "BEGIN ISOLATION LEVEL {level}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("SELECT count(*) FROM orgkeeper.org_member")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// A login role that is a member of a group role, for one test. Roles are
/// cluster-wide, so it is dropped when the guard goes — also when the test
/// panics half-way.
pub struct LoginRole {
    pub name: String,
    admin_url: String,
}

impl LoginRole {
    pub async fn create(db: &TestDb, prefix: &str, group: &str) -> LoginRole {
        let name = format!("{prefix}_{}", Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {name} LOGIN IN ROLE {group}"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
        LoginRole {
            name,
            admin_url: db.url.clone(),
        }
    }

    /// A connection to the test database logged in as this role.
    pub async fn connect(&self) -> PgConnection {
        let options: sqlx::postgres::PgConnectOptions =
            self.admin_url.parse().expect("test database URL");
        PgConnection::connect_with(&options.username(&self.name))
            .await
            .unwrap_or_else(|e| panic!("log in as {}: {e}", self.name))
    }
}

impl Drop for LoginRole {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // The test's runtime cannot be blocked on from inside: use a thread.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(async move {
                    let mut admin = PgConnection::connect(&url)
                        .await
                        .map_err(|e| e.to_string())?;
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
                        .execute(&mut admin)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(())
                })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop role {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop role {}: the dropping thread panicked",
                self.name
            ),
        }
    }
}

/// Records a user with a verified email, as the identity-provider sync would.
pub async fn user(db: &TestDb, email: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, $2, true)")
        .bind(id)
        .bind(email)
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

/// A team organization created by its owner (through a trusted session).
pub async fn team(db: &TestDb, name: &str, owner: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT orgkeeper.create_org($1, $2)")
        .bind(name)
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .expect("create_org")
}

/// The user's personal organization, created through a trusted session.
pub async fn personal(db: &TestDb, owner: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .expect("create_personal_org")
}

/// Every table a refused call or an attack could change, as one comparable
/// value, for asserting that nothing changed.
pub async fn state(pool: &PgPool) -> String {
    sqlx::query_scalar(
        "SELECT string_agg(t, ' | ' ORDER BY t) FROM (
            SELECT 'org: ' || string_agg(x::text, ',' ORDER BY x.id) AS t FROM orgkeeper.org x
            UNION ALL SELECT 'org_member: ' || string_agg(x::text, ',' ORDER BY x.org_id, x.user_id) FROM orgkeeper.org_member x
            UNION ALL SELECT 'users: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.users x
            UNION ALL SELECT 'invitation: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.invitation x
            UNION ALL SELECT 'pending_external_actions: ' || string_agg(x::text, ',' ORDER BY x.id)
                        FROM orgkeeper.pending_external_actions x
            UNION ALL SELECT 'api_keys: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.api_keys x
            UNION ALL SELECT 'custom_secrets: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.custom_secrets x
            UNION ALL SELECT 'gitlab_webhook: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.gitlab_webhook x
            UNION ALL SELECT 'slack_users: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.slack_users x
            UNION ALL SELECT 'user_repos: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.user_repos x
            UNION ALL SELECT 'billing_sessions: ' || string_agg(x::text, ',' ORDER BY x.id) FROM orgkeeper.billing_sessions x
            UNION ALL SELECT 'conversation_metadata_saas: ' || string_agg(x::text, ',' ORDER BY x.conversation_id)
                        FROM orgkeeper.conversation_metadata_saas x
        ) s",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Turns autovacuum off for `table` (orgkeeper's) in this test's database:
/// its ANALYZE would invalidate the plans a story about cached plans keeps.
pub async fn without_autovacuum(db: &TestDb, table: &'static str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE orgkeeper.{table} SET (autovacuum_enabled = false)"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
}

/// A counter of `pg_stat_xact_user_tables` (`counter`: a column, or a sum
/// of them) for orgkeeper's `table` in this session. On PostgreSQL 15 it
/// also holds earlier transactions' unflushed counts, so stories take the
/// difference around what they measure, inside one transaction.
pub async fn table_counter(conn: &mut PgConnection, table: &str, counter: &'static str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(max({counter}), 0)::bigint FROM pg_stat_xact_user_tables
          WHERE schemaname = 'orgkeeper' AND relname = $1"
    )))
    .bind(table)
    .fetch_one(conn)
    .await
    .unwrap()
}

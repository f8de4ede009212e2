//! Database access: the connection pool, `migrate` (refinery's versioned
//! migrations, then the SQL function library in `sql/`) and
//! `apply_deployment_settings` (what `orgkeeper migrate` records from the
//! environment, after migrating).

use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The function library, applied in this order after the migrations, in one
/// transaction. Each file is plain `CREATE OR REPLACE` and safe to re-apply.
pub const SQL_LIBRARY: &[(&str, &str)] = &[
    ("outbox.sql", include_str!("../sql/outbox.sql")),
    ("settings.sql", include_str!("../sql/settings.sql")),
    ("ownership.sql", include_str!("../sql/ownership.sql")),
    ("provisioning.sql", include_str!("../sql/provisioning.sql")),
    ("members.sql", include_str!("../sql/members.sql")),
    ("deletion.sql", include_str!("../sql/deletion.sql")),
    ("invitations.sql", include_str!("../sql/invitations.sql")),
    ("migration.sql", include_str!("../sql/migration.sql")),
    ("billing.sql", include_str!("../sql/billing.sql")),
    ("policy.sql", include_str!("../sql/policy.sql")),
    ("secrets.sql", include_str!("../sql/secrets.sql")),
    ("rls.sql", include_str!("../sql/rls.sql")),
];

/// Advisory-lock key that serialises concurrent `migrate` runs ("orgkeeper" in ASCII).
const MIGRATE_LOCK_KEY: i64 = 0x6f72_676b_6565_7065;

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versioned migrations applied by this run (`V3__legacy_model`, …).
    pub applied: Vec<String>,
    /// Whether the function library was (re-)applied; false when unchanged.
    pub library_applied: bool,
}

/// Opens a connection pool of at most `max_connections`.
pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_with(database_url, max_connections, &[]).await
}

/// A pool for the daemon, whose sessions never wait without bound: a
/// statement, a lock wait or an idle transaction that takes too long fails
/// (and the action is retried) instead of holding a slot forever.
pub async fn connect_daemon(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let limits = [
        ("statement_timeout", "30s"),
        ("lock_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "60s"),
    ];
    connect_with(database_url, max_connections, &limits).await
}

async fn connect_with(
    database_url: &str,
    max_connections: u32,
    settings: &[(&str, &str)],
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid PostgreSQL connection URL")?
        .application_name("orgkeeper")
        .options(settings.iter().copied())
        // Long statements (back-fills, benchmarks) are expected; time them in debug logs only.
        .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}",
                redact_url(database_url)
            )
        })
}

/// A connection URL with any password replaced by `***`, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparseable URL>".to_string(),
    }
}

/// Fails with a message saying what to run when the schema is missing or
/// older than this binary's migrations.
pub async fn check_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let latest = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i64)
        .max()
        .unwrap_or(0);
    let has_history: bool =
        sqlx::query_scalar("SELECT to_regclass('orgkeeper.schema_history') IS NOT NULL")
            .fetch_one(pool)
            .await
            .context("cannot read the schema version")?;
    let applied: Option<i64> = if has_history {
        sqlx::query_scalar("SELECT max(version)::bigint FROM orgkeeper.schema_history")
            .fetch_one(pool)
            .await
            .context("cannot read the schema version")?
    } else {
        None
    };
    match applied {
        Some(v) if v >= latest => Ok(()),
        Some(v) => anyhow::bail!("the database schema is at version {v} but this orgkeeper needs {latest}: run `orgkeeper migrate`"),
        None => anyhow::bail!("the database has no orgkeeper schema: run `orgkeeper migrate` first"),
    }
}

/// What [`apply_deployment_settings`] did with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingApplied {
    /// The setting's name.
    pub name: String,
    /// The value now recorded.
    pub value: String,
    /// False when it already had this value (the row was left untouched).
    pub changed: bool,
}

/// Records deployment settings in `orgkeeper.deployment_setting` (after
/// [`migrate`], which creates the table), in one transaction: a new or
/// different value is written with `set_by` = `orgkeeper migrate (<ENV>)` and
/// `set_at` = now; an equal one is left as it is. `orgkeeper migrate` calls it
/// with the settings given in the environment; [`migrate`] itself never
/// changes settings, so tests and tools that only migrate leave them alone.
pub async fn apply_deployment_settings(
    database_url: &str,
    settings: &[crate::config::DeploymentSetting],
) -> anyhow::Result<Vec<SettingApplied>> {
    if settings.is_empty() {
        return Ok(Vec::new());
    }
    let pool = connect(database_url, 1).await?;
    let mut tx = pool.begin().await?;
    let mut applied = Vec::new();
    for setting in settings {
        let changed: bool = sqlx::query_scalar(
            "WITH w AS (
                 INSERT INTO orgkeeper.deployment_setting AS s (name, value, set_by, set_at)
                 VALUES ($1, $2, $3, now())
                 ON CONFLICT (name) DO UPDATE
                    SET value = EXCLUDED.value, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at
                  WHERE s.value IS DISTINCT FROM EXCLUDED.value
                 RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM w)",
        )
        .bind(setting.name)
        .bind(&setting.value)
        .bind(format!("orgkeeper migrate ({})", setting.env))
        .fetch_one(&mut *tx)
        .await
        .with_context(|| {
            format!(
                "cannot record deployment setting {} = {} (from {})",
                setting.name, setting.value, setting.env
            )
        })?;
        applied.push(SettingApplied {
            name: setting.name.to_string(),
            value: setting.value.clone(),
            changed,
        });
    }
    tx.commit().await?;
    pool.close().await;
    Ok(applied)
}

/// Adds the org-creation policy entries given in the environment
/// (`ORGKEEPER_ALLOWED_OWNER_EMAILS`, `ORGKEEPER_ALLOWED_DOMAINS`) to
/// `orgkeeper.org_creation_policy`, in one transaction, with `added_by` =
/// `orgkeeper migrate (<ENV>)`. An entry already there is left as it is
/// (whoever added it), so running `migrate` again with the same environment
/// adds nothing. Entries are never removed here: `orgkeeper policy remove`.
/// Returns each entry with whether this run added it.
pub async fn apply_policy_seed(
    database_url: &str,
    seed: &[crate::config::PolicySeed],
) -> anyhow::Result<Vec<(crate::config::PolicySeed, bool)>> {
    if seed.is_empty() {
        return Ok(Vec::new());
    }
    let pool = connect(database_url, 1).await?;
    let mut tx = pool.begin().await?;
    let mut applied = Vec::new();
    for entry in seed {
        let added: bool = sqlx::query_scalar("SELECT orgkeeper.policy_allow($1, $2, $3)")
            .bind(entry.kind)
            .bind(&entry.value)
            .bind(format!("orgkeeper migrate ({})", entry.env))
            .fetch_one(&mut *tx)
            .await
            .with_context(|| {
                format!(
                    "cannot allow {} {} in the org-creation policy (from {})",
                    entry.kind, entry.value, entry.env
                )
            })?;
        applied.push((entry.clone(), added));
    }
    tx.commit().await?;
    pool.close().await;
    Ok(applied)
}

/// Checksum over the library files' names and contents.
fn library_checksum() -> String {
    files_checksum(SQL_LIBRARY)
}

/// SHA-256 hex of each `(name, body)` as `name NUL body NUL`, in order.
fn files_checksum(files: &[(&str, &str)]) -> String {
    let mut hasher = Sha256::new();
    for (name, body) in files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(body.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Names of the embedded versioned migrations, in order (`V1__roles_users_orgs`, …).
pub fn migration_names() -> Vec<String> {
    let runner = embedded::migrations::runner();
    let mut migrations: Vec<_> = runner.get_migrations().iter().collect();
    migrations.sort_by_key(|m| m.version());
    migrations
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect()
}

/// A fingerprint of the whole schema definition (migrations and library):
/// equal fingerprints mean `migrate` produces the same schema. The test
/// harness names its template database after it.
pub fn schema_fingerprint() -> String {
    let mut hasher = Sha256::new();
    for m in embedded::migrations::runner().get_migrations() {
        hasher.update(m.version().to_le_bytes());
        hasher.update(m.checksum().to_le_bytes());
    }
    hasher.update(library_checksum().as_bytes());
    hex::encode(hasher.finalize())
}

/// How long `migrate` waits for its locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrateLimits {
    /// Waiting for the migration lock another run holds; then `migrate`
    /// fails naming the holder.
    pub lock_wait: Duration,
    /// `lock_timeout` of every DDL statement: a table lock that cannot be
    /// had within it (an idle transaction holds the table) is given up at
    /// once, so the sessions queued behind `migrate` wait no longer than this.
    pub ddl_lock_timeout: Duration,
    /// Attempts of the whole run when a DDL lock times out.
    pub ddl_attempts: u32,
}

impl Default for MigrateLimits {
    fn default() -> Self {
        MigrateLimits {
            lock_wait: Duration::from_secs(60),
            ddl_lock_timeout: Duration::from_secs(2),
            ddl_attempts: 5,
        }
    }
}

/// Applies the versioned migrations and then the function library. Safe to
/// run twice and from several places at once: runs are serialised by an
/// advisory lock, applied migrations are skipped, and an unchanged library is
/// not re-applied. Waits are bounded ([`MigrateLimits::default`]).
pub async fn migrate(database_url: &str) -> anyhow::Result<MigrateReport> {
    migrate_with(database_url, MigrateLimits::default()).await
}

/// [`migrate`] with explicit limits on its lock waits.
pub async fn migrate_with(
    database_url: &str,
    limits: MigrateLimits,
) -> anyhow::Result<MigrateReport> {
    let (mut client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}",
                redact_url(database_url)
            )
        })?;
    let driver = tokio::spawn(connection);

    let outcome = match take_migrate_lock(&client, limits.lock_wait).await {
        Ok(()) => {
            let outcome = migrate_with_retries(&mut client, &limits).await;
            // Unlock even after a failure; closing the session would release it too.
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
                .await;
            outcome
        }
        Err(e) => Err(e),
    };
    drop(client);
    let _ = driver.await;
    outcome
}

/// Takes the session-level migration lock, waiting at most `wait`. Any role
/// can take an advisory lock, so the wait is bounded and the error names who
/// holds it.
async fn take_migrate_lock(client: &tokio_postgres::Client, wait: Duration) -> anyhow::Result<()> {
    set_lock_timeout(client, wait).await?;
    match client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            let holders: Option<String> = client
                .query_one(
                    "SELECT string_agg(format('pid %s (role %s, application %L, %s since %s)', a.pid, a.usename,
                                              a.application_name, a.state, coalesce(a.xact_start, a.backend_start)), '; ')
                       FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                        AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid",
                    &[&MIGRATE_LOCK_KEY],
                )
                .await?
                .get(0);
            anyhow::bail!(
                "another session has held orgkeeper's migration lock (advisory lock {MIGRATE_LOCK_KEY}) for more than {} s: {}; \
                 if it is not a migration, end it with SELECT pg_terminate_backend(<pid>) and run `orgkeeper migrate` again",
                wait.as_secs(),
                holders.unwrap_or_else(|| "it has just released it".into())
            )
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot take the migration lock")),
    }
}

async fn set_lock_timeout(
    client: &tokio_postgres::Client,
    timeout: Duration,
) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("SET lock_timeout = '{}ms'", timeout.as_millis()))
        .await
        .context("cannot set lock_timeout")
}

/// True when a statement gave up waiting for a lock (SQLSTATE 55P03).
fn is_lock_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    })
}

/// Runs the migrations and the library with a short `lock_timeout`, again
/// (with a growing pause) when a table lock could not be had; after the last
/// attempt the error names the sessions holding locks on orgkeeper's tables.
async fn migrate_with_retries(
    client: &mut tokio_postgres::Client,
    limits: &MigrateLimits,
) -> anyhow::Result<MigrateReport> {
    set_lock_timeout(client, limits.ddl_lock_timeout).await?;
    let mut attempt = 1;
    loop {
        match migrate_locked(client).await {
            Err(e) if is_lock_timeout(&e) && attempt < limits.ddl_attempts => {
                tracing::warn!(
                    attempt,
                    "a table lock was not available within lock_timeout; trying again"
                );
                tokio::time::sleep(limits.ddl_lock_timeout * attempt).await;
                attempt += 1;
            }
            Err(e) if is_lock_timeout(&e) => {
                let holders: Option<String> = client
                    .query_one(
                        "SELECT string_agg(DISTINCT format('pid %s (role %s, %s since %s)', a.pid, a.usename, a.state,
                                                           coalesce(a.xact_start, a.backend_start)), '; ')
                           FROM pg_locks l
                           JOIN pg_class c ON c.oid = l.relation
                           JOIN pg_stat_activity a ON a.pid = l.pid
                          WHERE c.relnamespace = 'orgkeeper'::regnamespace AND l.granted AND l.pid <> pg_backend_pid()",
                        &[],
                    )
                    .await?
                    .get(0);
                return Err(e.context(format!(
                    "migrate could not lock orgkeeper's tables within {} ms in {} attempts; sessions holding locks on them: {}; \
                     end or commit them (an idle transaction holds its locks until it ends) and run `orgkeeper migrate` again",
                    limits.ddl_lock_timeout.as_millis(),
                    limits.ddl_attempts,
                    holders.unwrap_or_else(|| "none any more".into())
                )));
            }
            outcome => return outcome,
        }
    }
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> anyhow::Result<MigrateReport> {
    // refinery keeps its history table in our schema, which must exist first.
    client
        .batch_execute("SET client_min_messages = warning; CREATE SCHEMA IF NOT EXISTS orgkeeper")
        .await
        .context("cannot create schema orgkeeper")?;
    let report = embedded::migrations::runner()
        .set_migration_table_name("orgkeeper.schema_history")
        .run_async(client)
        .await
        .context("a versioned migration failed; the database keeps every migration before it")?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();

    let checksum = library_checksum();
    let current: Option<String> = client
        .query_opt("SELECT checksum FROM orgkeeper.sql_library", &[])
        .await?
        .map(|row| row.get(0));
    // Applied again after any versioned migration too: parts of the library
    // are generated from the schema (read_secret and replace_secrets cast
    // key values to the key columns' types).
    let library_applied = current.as_deref() != Some(checksum.as_str()) || !applied.is_empty();
    if library_applied {
        let tx = client.transaction().await?;
        // SQL-standard function bodies (`RETURN ...`) bind their names when
        // they are created: under this path, never the migrating login's.
        tx.batch_execute("SET LOCAL search_path = pg_catalog, orgkeeper, pg_temp")
            .await?;
        for (name, body) in SQL_LIBRARY {
            tx.batch_execute(body).await.with_context(|| {
                format!("applying sql/{name} failed; nothing of the library was changed")
            })?;
        }
        tx.execute(
            "INSERT INTO orgkeeper.sql_library (checksum) VALUES ($1)
             ON CONFLICT (singleton) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
            &[&checksum],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(MigrateReport {
        applied,
        library_applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library checksum is stored (`orgkeeper.sql_library`): a changed
    /// hash would re-apply an unchanged library. The expected value is
    /// Python's `hashlib.sha256(b"a.sql\0SELECT 1;\0b.sql\0\0").hexdigest()`.
    #[test]
    fn the_library_checksum_is_the_committed_sha256_of_names_and_bodies() {
        assert_eq!(
            files_checksum(&[("a.sql", "SELECT 1;"), ("b.sql", "")]),
            "080a8a5ac8a1b8bbd4d2481fe925fe7f6905de09e5cc052a184210c0244bec32"
        );
    }
}

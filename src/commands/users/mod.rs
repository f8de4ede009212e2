//! `orgkeeper users migrate|verify|rollback`: the user-migration functions of
//! `sql/migration.sql` from the command line. The database does the work;
//! this module calls the functions, shows progress and reports.

pub mod live_checks;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use sqlx::postgres::PgDatabaseError;
use sqlx::{Connection, PgConnection, PgPool};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What `orgkeeper users` can do.
#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// Migrate a legacy user into a personal organization (or all of them with --all).
    Migrate {
        /// The user to migrate (omit with --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        user_id: Option<Uuid>,
        /// Migrate every user whose user_settings.already_migrated is false, in batches.
        #[arg(long)]
        all: bool,
        /// Users per batch with --all (one transaction each).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=100_000))]
        batch: i32,
        /// Concurrent database sessions with --all.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// Check a migrated user (exit status 1 when a check fails); with --live
    /// also ask LiteLLM and Stripe (needs their settings and ORGKEEPER_SECRET_KEY).
    Verify {
        /// The user to check.
        user_id: Uuid,
        /// Also check the user, team and key at LiteLLM and the customers at Stripe.
        #[arg(long, env = "ORGKEEPER_VERIFY_LIVE")]
        live: bool,
        /// How to reach LiteLLM and Stripe, and the secret key (used with --live).
        #[command(flatten)]
        services: Box<LiveArgs>,
    },
    /// Undo a user's migration in the database and enqueue the external reversals.
    Rollback {
        /// The user whose migration to undo.
        user_id: Uuid,
    },
}

/// What `users verify --live` needs to reach the services.
#[derive(Debug, Clone, clap::Args)]
pub struct LiveArgs {
    #[command(flatten)]
    litellm: crate::config::LiteLlmArgs,
    #[command(flatten)]
    stripe: crate::config::StripeArgs,
    #[command(flatten)]
    secrets: crate::config::SecretArgs,
}

/// Runs a `users` command. Refusals by the database are printed as
/// `error: <message> (SQLSTATE xxxxx)` with its hint, and give exit status 1.
pub async fn run(pool: &PgPool, cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    let outcome = match cmd {
        UsersCommand::Migrate {
            all: true,
            batch,
            jobs,
            ..
        } => migrate_all(pool, batch, jobs).await,
        UsersCommand::Migrate {
            user_id: Some(user_id),
            ..
        } => migrate_one(pool, user_id).await,
        UsersCommand::Migrate { .. } => {
            anyhow::bail!("name a user to migrate, or pass --all")
        }
        UsersCommand::Verify {
            user_id,
            live,
            services,
        } => verify(pool, user_id, live.then_some(&*services)).await,
        UsersCommand::Rollback { user_id } => rollback(pool, user_id).await,
    };
    match outcome {
        Ok(code) => Ok(code),
        Err(err) => match refusal(&err) {
            Some(text) => {
                eprintln!("{text}");
                Ok(ExitCode::from(1))
            }
            None => Err(err),
        },
    }
}

/// A database error rendered for the terminal: message, SQLSTATE and hint.
/// `None` when `err` is not an error reported by the database.
pub fn refusal(err: &anyhow::Error) -> Option<String> {
    let db = err.chain().find_map(|cause| match cause.downcast_ref() {
        Some(sqlx::Error::Database(db)) => Some(db),
        _ => None,
    })?;
    let code = db.code().map(|c| c.to_string()).unwrap_or_default();
    let mut text = format!("error: {} (SQLSTATE {code})", db.message());
    if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
        if let Some(detail) = pg.detail() {
            text.push_str(&format!("\ndetail: {detail}"));
        }
        if let Some(hint) = pg.hint() {
            text.push_str(&format!("\nhint: {hint}"));
        }
    }
    Some(text)
}

fn status(report: &Value) -> &str {
    report.get("status").and_then(Value::as_str).unwrap_or("")
}

fn text<'a>(report: &'a Value, key: &str) -> &'a str {
    report.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn pretty(report: &Value) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|_| report.to_string())
}

async fn migrate_one(pool: &PgPool, user_id: Uuid) -> anyhow::Result<ExitCode> {
    let sql = "SELECT orgkeeper.migrate_user($1)";
    report_command(pool, sql, user_id, |status, report| match status {
        "migrated" => Some(format!(
            "migrated user {user_id} into personal organization \"{}\" ({})",
            text(report, "org_name"),
            text(report, "org_id")
        )),
        "already_migrated" => Some(format!(
            "user {user_id} is already migrated; nothing changed"
        )),
        _ => None,
    })
    .await
}

async fn rollback(pool: &PgPool, user_id: Uuid) -> anyhow::Result<ExitCode> {
    let sql = "SELECT orgkeeper.rollback_user_migration($1)";
    report_command(pool, sql, user_id, |status, report| match status {
        "rolled_back" => Some(format!(
            "rolled back the migration of user {user_id}: personal organization \"{}\" removed, legacy rows restored",
            text(report, "org_name")
        )),
        "not_migrated" => Some(format!("user {user_id} is not migrated; nothing changed")),
        _ => None,
    })
    .await
}

/// Calls `sql` (a function of the user id returning a JSON report) and prints
/// the line `describe` gives for the report's status, then the report.
/// A status `describe` does not know (`None`) prints the report's detail and
/// gives exit status 1.
async fn report_command(
    pool: &PgPool,
    sql: &'static str,
    user_id: Uuid,
    describe: impl FnOnce(&str, &Value) -> Option<String>,
) -> anyhow::Result<ExitCode> {
    let report: Value = sqlx::query_scalar(sql)
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    let code = match describe(status(&report), &report) {
        Some(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        None => {
            println!("user {user_id}: {}", text(&report, "detail"));
            ExitCode::from(1)
        }
    };
    println!("{}", pretty(&report));
    Ok(code)
}

async fn verify(pool: &PgPool, user_id: Uuid, live: Option<&LiveArgs>) -> anyhow::Result<ExitCode> {
    let mut rows: Vec<(String, bool, String)> =
        sqlx::query_as("SELECT check_name, ok, detail FROM orgkeeper.verify_user_migration($1)")
            .bind(user_id)
            .fetch_all(pool)
            .await?;
    if let Some(args) = live {
        let litellm = crate::litellm::LiteLlmClient::new(args.litellm.settings()?.client)?;
        let stripe = args
            .stripe
            .settings()?
            .map(crate::stripe::StripeClient::new)
            .transpose()?;
        let keyring = args.secrets.keyring()?;
        rows.extend(live_checks::run(pool, &litellm, stripe.as_ref(), &keyring, user_id).await?);
    }
    print!("{}", verify_table(&rows));
    let failed = rows.iter().filter(|(_, ok, _)| !ok).count();
    if failed == 0 {
        println!("user {user_id}: all {} checks passed", rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("user {user_id}: {failed} of {} checks failed", rows.len());
        Ok(ExitCode::from(1))
    }
}

/// The verification rows as an aligned text table.
pub fn verify_table(rows: &[(String, bool, String)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _, _)| name.len())
        .chain(std::iter::once("check".len()))
        .max()
        .unwrap_or(5);
    let mut out = format!("{:<width$}  {:<4}  detail\n", "check", "ok");
    for (name, ok, detail) in rows {
        let mark = if *ok { "ok" } else { "FAIL" };
        out.push_str(&format!("{name:<width$}  {mark:<4}  {detail}\n"));
    }
    out
}

/// What [`migrate_batches`] did.
pub struct BatchRun {
    /// Duration of each `migrate_users` call that migrated someone, in ms.
    pub batch_ms: Vec<f64>,
    /// The first error of a session (the others stopped after their batch).
    pub error: Option<anyhow::Error>,
}

/// The back-fill loop of `orgkeeper users migrate --all` (and of `orgkeeper
/// bench migrate`, which times this very code): `jobs` sessions each call
/// `orgkeeper.migrate_users(batch)` (one transaction per call) until it
/// returns 0, `stop` is set, or — with `limit` — `migrated` reaches it.
/// `migrated` counts the users migrated; `on_batch(n)` is called after each
/// batch. An error stops the other sessions after their current batch.
pub async fn migrate_batches(
    options: &sqlx::postgres::PgConnectOptions,
    batch: i32,
    jobs: usize,
    limit: Option<u64>,
    migrated: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    on_batch: impl Fn(u64) + Clone + Send + Sync + 'static,
) -> BatchRun {
    let mut workers = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let options = options.clone();
        let (migrated, stop, on_batch) = (migrated.clone(), stop.clone(), on_batch.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect_with(&options).await?;
            let mut batch_ms = Vec::new();
            let outcome = async {
                while !stop.load(Ordering::SeqCst)
                    && limit.is_none_or(|l| migrated.load(Ordering::SeqCst) < l)
                {
                    let t = Instant::now();
                    let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users($1)")
                        .bind(batch)
                        .fetch_one(&mut conn)
                        .await?;
                    if n == 0 {
                        break;
                    }
                    batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    migrated.fetch_add(n as u64, Ordering::SeqCst);
                    on_batch(n as u64);
                }
                Ok::<_, anyhow::Error>(())
            }
            .await;
            if outcome.is_err() {
                // The other sessions stop after their current batch.
                stop.store(true, Ordering::SeqCst);
            }
            let _ = conn.close().await;
            outcome.map(|()| batch_ms)
        }));
    }
    let mut run = BatchRun {
        batch_ms: Vec::new(),
        error: None,
    };
    for worker in workers {
        let outcome = match worker.await {
            Ok(outcome) => outcome,
            Err(join) => Err(anyhow::anyhow!("a migration job panicked: {join}")),
        };
        match outcome {
            Ok(ms) => run.batch_ms.extend(ms),
            Err(err) => {
                run.error.get_or_insert(err);
            }
        }
    }
    run
}

async fn migrate_all(pool: &PgPool, batch: i32, jobs: u16) -> anyhow::Result<ExitCode> {
    let (total, started_at): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT count(*), now() FROM orgkeeper.user_settings s
          WHERE s.already_migrated = false
            AND NOT EXISTS (SELECT 1 FROM orgkeeper.user_migration_error e WHERE e.user_id = s.user_id)",
    )
    .fetch_one(pool)
    .await?;

    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} users  {per_sec}  ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let migrated = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let interrupt = {
        let stop = stop.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
                bar.println("interrupted: stopping after the batches in flight (each batch is one transaction)");
            }
        })
    };

    let clock = Instant::now();
    let on_batch = {
        let bar = bar.clone();
        move |n: u64| bar.inc(n)
    };
    let run = migrate_batches(
        &pool.connect_options(),
        batch,
        jobs as usize,
        None,
        migrated.clone(),
        stop.clone(),
        on_batch,
    )
    .await;
    let first_error = run.error;
    interrupt.abort();
    bar.finish_and_clear();

    let elapsed = clock.elapsed();
    let done = migrated.load(Ordering::SeqCst);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "migrated {done} users in {:.1} s ({rate:.0} users/s) with {jobs} job(s), batches of {batch}",
        elapsed.as_secs_f64()
    );

    let (left, unknown, failed_now, failed_all): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orgkeeper.user_settings WHERE already_migrated = false),
                (SELECT count(*) FROM orgkeeper.user_settings WHERE already_migrated IS NULL),
                (SELECT count(*) FROM orgkeeper.user_migration_error WHERE failed_at >= $1),
                (SELECT count(*) FROM orgkeeper.user_migration_error)",
    )
    .bind(started_at)
    .fetch_one(pool)
    .await?;
    if left > 0 {
        println!("not migrated: {left} user(s) with already_migrated = false");
    }
    if failed_all > 0 {
        println!(
            "{failed_all} user(s) could not be migrated ({failed_now} in this run); see: SELECT * FROM orgkeeper.user_migration_error; retry one with: orgkeeper users migrate <user_id>"
        );
    }
    if unknown > 0 {
        println!(
            "{unknown} user(s) have user_settings.already_migrated NULL (unknown) and were left alone; set it to false to migrate them"
        );
    }
    if let Some(err) = first_error {
        eprintln!("the back-fill stopped early; the batches that finished stay migrated");
        return Err(err);
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(ExitCode::from(130));
    }
    Ok(if failed_now > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

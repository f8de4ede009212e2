//! `orgkeeper bench migrate`: how fast legacy users move into personal
//! organizations — the database half (`orgkeeper.migrate_users`) from one
//! and two sessions, against its floor (the rows it writes, without its
//! logic: `bench/floor/migrate.sql`), and the external half (the daemon
//! working the `litellm.migrate_user`, `stripe.migrate_customer` and
//! `secrets.reencrypt` actions, and the `litellm.verify_key` actions they
//! enqueue, against the in-process simulators).
//!
//! The legacy data comes from [`crate::legacy_data`], the generator the
//! tests use too: set-based in SQL, per user a `user_settings` row and about
//! 20 related rows, written as OpenHands stores them (Fernet-wrapped
//! credentials under a `jwt_secret` made up here, some plaintext, some
//! missing), with LiteLLM budgets of every kind for the external phase.

use super::{percentile, BenchEnv};
use crate::legacy_data::{self, LegacyValues};
use crate::litellm::LiteLlmSimulator;
use crate::stripe::StripeSimulator;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the user-migration benchmark.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Legacy users generated for the database-side figures
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Batch size given to orgkeeper.migrate_users
    #[arg(long, default_value_t = 1000)]
    pub batch: i32,
    /// Users (generated separately, seeded in the simulators) for the external-side figures
    #[arg(long, default_value_t = 5000)]
    pub external_users: u32,
    /// The daemon's concurrency
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Use this server (a fresh database is created on it) instead of a private cluster
    #[arg(long, env = "BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// End the output with one JSON object of the figures
    #[arg(long)]
    pub json: bool,
}

/// How long the external phase may go without an action finishing before
/// the benchmark stops waiting.
const STALL: Duration = Duration::from_secs(120);

/// Runs the benchmark and prints its figures.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        args.external_users >= 1,
        "--external-users must be at least 1"
    );
    let mut env = BenchEnv::start(args.database_url.as_deref()).await?;
    let current_key = crate::secrets::generate_key();
    // The legacy application's jwt_secret: any string; a random one here.
    let jwt_secret = crate::secrets::generate_key();
    let values = LegacyValues::new(&jwt_secret);
    let pool = crate::db::connect(&env.url, 8).await?;

    // ---------------------------------------------------------------- data
    println!(
        "generating {} legacy users (~20 related rows each)",
        args.users
    );
    let started = Instant::now();
    let rows = generate(&pool, 1, args.users, &values).await?;
    let generate_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    vacuum_analyze(&pool).await?;
    let analyze_secs = started.elapsed().as_secs_f64();
    println!(
        "  rows inserted        {rows:>10}  ({:.1} related rows per user)",
        (rows - args.users as u64) as f64 / args.users as f64
    );
    println!(
        "  generation           {generate_secs:>10.1} s     ({:.0} rows/s)",
        rows as f64 / generate_secs
    );
    println!("  VACUUM ANALYZE       {analyze_secs:>10.1} s");

    // ------------------------------------------------------- database side
    let half = u64::from(args.users / 2);
    println!(
        "database side, 1 session: migrate_users({}) until {half} users are migrated",
        args.batch
    );
    let one = migrate_sessions(&env.url, args.batch, 1, Some(half), half).await?;
    let users_per_s_db = one.users_per_s();
    one.print();

    let rest = u64::from(args.users) - one.migrated;
    println!(
        "database side, 2 sessions: migrate_users({}) until none is left ({rest} users)",
        args.batch
    );
    let two = migrate_sessions(&env.url, args.batch, 2, None, rest).await?;
    let users_per_s_db_2 = two.users_per_s();
    two.print();

    let (left, errors): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orgkeeper.user_settings WHERE already_migrated IS NOT TRUE),
                (SELECT count(*) FROM orgkeeper.user_migration_error)",
    )
    .fetch_one(&pool)
    .await?;
    if left > 0 || errors > 0 {
        println!(
            "  WARNING: {left} users not migrated, {errors} in orgkeeper.user_migration_error"
        );
    }

    // ------------------------------------------------------- external side
    let external =
        external_phase(&args, &mut env, &pool, &values, &current_key, &jwt_secret).await?;

    pool.close().await;
    env.finish().await?;

    println!("summary");
    println!("  database, 1 session  {users_per_s_db:>10.0} users/s  (target >= 2000)");
    println!("  database, 2 sessions {users_per_s_db_2:>10.0} users/s  (target >= 2000)");
    if let Some(floor) = external.floor_users_per_s {
        println!(
            "  database floor       {floor:>10.0} users/s  (its rows without its logic, 1 session)"
        );
    }
    println!(
        "  external             {:>10.0} users/s  (target >= 1000; {} users, {:.0} actions/s)",
        external.users_per_s, args.external_users, external.actions_per_s
    );
    if args.json {
        println!(
            "{}",
            json!({
                "users_per_s_db": round1(users_per_s_db),
                "users_per_s_db_2_sessions": round1(users_per_s_db_2),
                "users_per_s_external": round1(external.users_per_s),
                "users_per_s_db_floor": external.floor_users_per_s.map(round1),
            })
        );
    }
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn progress(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "  {{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
        ))
        .expect("valid progress template"),
    );
    bar
}

// ---------------------------------------------------------------------------
// the generator
// ---------------------------------------------------------------------------

/// Generates users `first..first+n` (see [`legacy_data::generate`]) with a
/// progress bar over the tables.
async fn generate(pool: &PgPool, first: u32, n: u32, values: &LegacyValues) -> anyhow::Result<u64> {
    let bar = progress(legacy_data::tables().len() as u64, "tables");
    let rows = legacy_data::generate(pool, first, n, values, Some(&bar)).await?;
    bar.finish_and_clear();
    Ok(rows)
}

/// VACUUM ANALYZE of the generated tables, as a settled legacy database
/// would be (visibility map set, statistics current).
async fn vacuum_analyze(pool: &PgPool) -> anyhow::Result<()> {
    let tables = legacy_data::tables()
        .iter()
        .map(|t| format!("orgkeeper.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {tables}")))
        .execute(pool)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// the database side
// ---------------------------------------------------------------------------

struct DbPhase {
    sessions: usize,
    migrated: u64,
    secs: f64,
    /// Duration of each migrate_users call, in ms, sorted.
    batch_ms: Vec<f64>,
}

impl DbPhase {
    fn users_per_s(&self) -> f64 {
        self.migrated as f64 / self.secs
    }

    fn print(&self) {
        println!(
            "  migrated             {:>10}  users in {:.1} s from {} session(s)",
            self.migrated, self.secs, self.sessions
        );
        println!("  users/s              {:>10.0}", self.users_per_s());
        println!(
            "  batch p50 / max      {:>10.0} / {:.0} ms  ({} batches)",
            percentile(&self.batch_ms, 50.0),
            self.batch_ms.last().copied().unwrap_or(f64::NAN),
            self.batch_ms.len()
        );
    }
}

/// `sessions` connections each call `migrate_users(batch)` in a loop (one
/// transaction per call) until it returns 0 or, with `limit`, until that
/// many users are migrated — through `orgkeeper users migrate --all`'s own
/// loop ([`crate::commands::users::migrate_batches`]), so the figure is that of the
/// code operators run.
async fn migrate_sessions(
    url: &str,
    batch: i32,
    sessions: usize,
    limit: Option<u64>,
    expected: u64,
) -> anyhow::Result<DbPhase> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    let migrated = Arc::new(AtomicU64::new(0));
    let bar = progress(expected, "users");
    let on_batch = {
        let bar = bar.clone();
        move |n: u64| bar.inc(n)
    };
    let started = Instant::now();
    let run = crate::commands::users::migrate_batches(
        &options,
        batch,
        sessions,
        limit,
        migrated.clone(),
        Arc::new(AtomicBool::new(false)),
        on_batch,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if let Some(err) = run.error {
        return Err(err);
    }
    let mut batch_ms = run.batch_ms;
    batch_ms.sort_by(f64::total_cmp);
    Ok(DbPhase {
        sessions,
        migrated: migrated.load(Ordering::SeqCst),
        secs,
        batch_ms,
    })
}

// ---------------------------------------------------------------------------
// the external side
// ---------------------------------------------------------------------------

struct External {
    users_per_s: f64,
    actions_per_s: f64,
    /// The database side's floor on these users, users/s (see [`floor`]).
    floor_users_per_s: Option<f64>,
}

/// Generates `--external-users` more users, seeds their LiteLLM budgets and
/// keys and their Stripe customers, cancels the actions left by the database
/// phases, migrates them, then starts the daemon and times it until every
/// one of their actions is finished.
async fn external_phase(
    args: &MigrateArgs,
    env: &mut BenchEnv,
    pool: &PgPool,
    values: &LegacyValues,
    current_key: &SecretString,
    jwt_secret: &SecretString,
) -> anyhow::Result<External> {
    let n = args.external_users;
    let first = args.users + 1;
    println!(
        "external side: {n} more users (a subset: the external half is measured on these only), daemon concurrency {}",
        args.concurrency
    );
    let cancelled = sqlx::query(
        "UPDATE orgkeeper.pending_external_actions
            SET status = 'cancelled', finished_at = now(), updated_at = now(),
                result = coalesce(result, '{}'::jsonb) || '{\"cancelled_by\": \"bench migrate\"}'::jsonb
          WHERE status = 'pending'",
    )
    .execute(pool)
    .await?
    .rows_affected();
    println!("  cancelled            {cancelled:>10}  actions of the database phases");

    generate(pool, first, n, values).await?;
    let users = legacy_data::users(pool, first, n).await?;
    let litellm = LiteLlmSimulator::start_local().await?;
    let stripe = StripeSimulator::start_local().await?;
    legacy_data::seed_simulators(pool, &users, &litellm, &stripe).await?;
    sqlx::query("ANALYZE orgkeeper.user_settings, orgkeeper.stripe_customers")
        .execute(pool)
        .await?;

    let first_action: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(id), 0) + 1 FROM orgkeeper.pending_external_actions",
    )
    .fetch_one(pool)
    .await?;
    let floor_users_per_s = match floor(pool, args.batch, 3).await {
        Ok(rounds) => {
            let best = rounds.iter().copied().fold(f64::NAN, f64::max);
            println!(
                "  database floor       {best:>10.0}  users/s  (the rows migrate_users({}) writes, no logic; rolled back; rounds: {})",
                args.batch,
                rounds.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
            );
            Some(best)
        }
        Err(e) => {
            println!("  database floor       not measured: {e:#}");
            None
        }
    };
    let db = migrate_sessions(&env.url, args.batch, 1, None, u64::from(n)).await?;
    println!(
        "  migrated (database)  {:>10}  users ({:.0} users/s{})",
        db.migrated,
        db.users_per_s(),
        floor_users_per_s.map_or(String::new(), |f| format!(
            ", {:.0} % of the floor",
            100.0 * db.users_per_s() / f
        ))
    );
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM orgkeeper.pending_external_actions
          WHERE id >= $1 GROUP BY kind ORDER BY kind",
    )
    .bind(first_action)
    .fetch_all(pool)
    .await?;
    let total: i64 = kinds.iter().map(|(_, c)| c).sum();
    println!(
        "  actions              {total:>10}  ({})",
        kinds
            .iter()
            .map(|(k, c)| format!("{c} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Hold the actions back while the daemon starts, so that its start-up
    // is not in the figure.
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET run_after = now() + interval '1 day'
          WHERE id >= $1 AND status = 'pending'",
    )
    .bind(first_action)
    .execute(pool)
    .await?;
    env.spawn_daemon(&[
        ("LITELLM_BASE_URL", litellm.base_url()),
        ("LITELLM_MASTER_KEY", litellm.master_key()),
        ("STRIPE_BASE_URL", stripe.base_url()),
        ("STRIPE_API_KEY", stripe.api_key()),
        (
            "ORGKEEPER_SECRET_KEY",
            current_key.expose_secret().to_string(),
        ),
        (
            "ORGKEEPER_LEGACY_JWT_SECRET",
            jwt_secret.expose_secret().to_string(),
        ),
        ("ORGKEEPER_CONCURRENCY", args.concurrency.to_string()),
    ])?;
    let ready_secs = wait_listening(pool).await?;
    println!("  daemon ready in      {ready_secs:>10.2} s  (its actions held back until then)");
    // Release the held-back actions at once; the NOTIFY wakes the daemon
    // instead of its next poll. The time is taken from the database clock:
    // from just before this commit to the last finished_at.
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET run_after = now(), updated_at = now()
          WHERE id >= $1 AND status = 'pending'",
    )
    .bind(first_action)
    .execute(&mut *tx)
    .await?;
    let released: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT clock_timestamp() FROM pg_notify('orgkeeper_actions', '{\"ids\": []}')",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let started = Instant::now();
    let bar = progress(total as u64, "actions");
    // The actions enqueue follow-ups (a finished secrets.reencrypt enqueues
    // the member's litellm.verify_key): the migration is over when no action
    // from first_action on, follow-ups included, is unfinished. Every 100 ms
    // the poll asks only whether one is (the first entry of a partial
    // index); the count for the progress bar, which costs more, is taken
    // once a second, so that the poll takes little from the daemon it
    // measures.
    let mut last_progress = Instant::now();
    for poll in 1u64.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orgkeeper.pending_external_actions
                             WHERE finished_at IS NULL AND id >= $1)",
        )
        .bind(first_action)
        .fetch_one(pool)
        .await?;
        if !busy {
            break;
        }
        if poll % 10 != 0 {
            continue;
        }
        let (finished, all) = finished_since(pool, first_action).await?;
        if finished > bar.position() as i64 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            bar.println(format!(
                "  WARNING: no action finished for {} s; giving up with {} unfinished",
                STALL.as_secs(),
                all - finished
            ));
            break;
        }
        bar.set_length(all as u64);
        bar.set_position(finished as u64);
    }
    let mut secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (finished, total) = finished_since(pool, first_action).await?;
    if finished == total {
        secs = sqlx::query_scalar(
            "SELECT extract(epoch FROM max(finished_at) - $2)::float8
               FROM orgkeeper.pending_external_actions WHERE id >= $1",
        )
        .bind(first_action)
        .bind(released)
        .fetch_one(pool)
        .await?;
    }
    let result = External {
        users_per_s: f64::from(n) / secs,
        actions_per_s: total as f64 / secs,
        floor_users_per_s,
    };
    println!("  finished             {finished:>10}  actions in {secs:.2} s");
    println!("  users/s              {:>10.0}", result.users_per_s);
    println!("  actions/s            {:>10.0}", result.actions_per_s);

    let not_done: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT kind, status, count(*) FROM orgkeeper.pending_external_actions
          WHERE id >= $1 AND status <> 'done' GROUP BY kind, status ORDER BY kind, status",
    )
    .bind(first_action)
    .fetch_all(pool)
    .await?;
    let not_done_n: i64 = not_done.iter().map(|(_, _, c)| c).sum();
    println!("  not done             {not_done_n:>10}");
    if not_done_n > 0 {
        println!(
            "  WARNING: {not_done_n} actions did not end done: {}",
            not_done
                .iter()
                .map(|(k, s, c)| format!("{c} {k} {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let errors: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT kind, last_error FROM orgkeeper.pending_external_actions
              WHERE id >= $1 AND status <> 'done' ORDER BY id LIMIT 3",
        )
        .bind(first_action)
        .fetch_all(pool)
        .await?;
        for (kind, error) in errors {
            println!(
                "    e.g. {kind}: {}",
                error.as_deref().unwrap_or("(no error)")
            );
        }
    }

    let started = Instant::now();
    let (failed_users, failed_checks): (i64, Vec<String>) = sqlx::query_as(
        "SELECT count(DISTINCT u), coalesce(array_agg(DISTINCT v.check_name), '{}')
           FROM unnest($1::uuid[]) AS u, LATERAL orgkeeper.verify_user_migration(u) v
          WHERE NOT v.ok",
    )
    .bind(users.iter().map(|u| u.user_id).collect::<Vec<_>>())
    .fetch_one(pool)
    .await?;
    println!(
        "  verify_user_migration {:>9}  users failing a check ({:.1} s to verify {n})",
        failed_users,
        started.elapsed().as_secs_f64()
    );
    if failed_users > 0 {
        println!("  WARNING: failing checks: {}", failed_checks.join(", "));
    }
    let sim = litellm.stats();
    println!(
        "  LiteLLM requests     {:>10}  ({:.1} per user)",
        sim.total_requests(),
        sim.total_requests() as f64 / f64::from(n)
    );
    println!(
        "  Stripe requests      {:>10}",
        stripe.stats().requests_to("update_customer")
    );
    println!(
        "  daemon peak RSS      {:>10.1} MB",
        env.daemon_peak_rss_mb().unwrap_or(f64::NAN)
    );
    env.stop_daemon()?;
    litellm.shutdown().await;
    stripe.shutdown().await;
    Ok(result)
}

/// How many actions from `first_action` on are finished, and how many there are.
async fn finished_since(pool: &PgPool, first_action: i64) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL), count(*)
           FROM orgkeeper.pending_external_actions WHERE id >= $1",
    )
    .bind(first_action)
    .fetch_one(pool)
    .await
}

/// The floor of the database side: the rows `migrate_users(batch)` writes
/// for the next `batch` unmigrated users, written without any of its logic
/// (`bench/floor/migrate.sql`: no triggers, checks, log aggregates) and
/// rolled back, `rounds` times; users/s of each round. What no tuning of the
/// migration's logic can beat on this server.
async fn floor(pool: &PgPool, batch: i32, rounds: usize) -> anyhow::Result<Vec<f64>> {
    const WRITES: &str = include_str!("../../../bench/floor/migrate.sql");
    let mut figures = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut tx = pool.begin().await?;
        sqlx::query("CREATE TEMPORARY TABLE floor_users (user_id uuid, email text) ON COMMIT DROP")
            .execute(&mut *tx)
            .await?;
        let users = sqlx::query(
            "INSERT INTO floor_users
             SELECT user_id, email FROM orgkeeper.user_settings
              WHERE already_migrated = false ORDER BY user_id LIMIT $1",
        )
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        anyhow::ensure!(users > 0, "no unmigrated user left to measure it on");
        let started = Instant::now();
        sqlx::raw_sql(WRITES).execute(&mut *tx).await.context(
            "bench/floor/migrate.sql (it disables triggers: the URL must be the tables' owner's)",
        )?;
        figures.push(users as f64 / started.elapsed().as_secs_f64());
        tx.rollback().await?;
    }
    // The rolled-back rows are dead tuples (and dead index entries, in the
    // outbox's too) that the migration measured next would otherwise meet.
    sqlx::raw_sql(
        "VACUUM orgkeeper.users, orgkeeper.org, orgkeeper.org_member, orgkeeper.pending_external_actions,
                orgkeeper.stripe_customers, orgkeeper.slack_users, orgkeeper.slack_conversation,
                orgkeeper.api_keys, orgkeeper.custom_secrets, orgkeeper.billing_sessions,
                orgkeeper.user_repos, orgkeeper.gitlab_webhook, orgkeeper.conversation_metadata_saas,
                orgkeeper.user_migration, orgkeeper.user_settings",
    )
    .execute(pool)
    .await?;
    Ok(figures)
}

/// Waits until the daemon has its LISTEN connection up (it polls once right
/// after), returning how long that took.
async fn wait_listening(pool: &PgPool) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let listening: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE datname = current_database() AND pid <> pg_backend_pid()
                               AND query ILIKE 'LISTEN%orgkeeper_actions%')",
        )
        .fetch_one(pool)
        .await?;
        if listening {
            // Let its first poll (nothing due) pass.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(30) {
            println!("  WARNING: the daemon's LISTEN did not show in pg_stat_activity within 30 s; going on");
            return Ok(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

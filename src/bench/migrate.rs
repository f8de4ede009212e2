//! `orgkeeper bench migrate`: how fast legacy users move into personal
//! organizations — the database half (`orgkeeper.migrate_users`) from one
//! and two sessions, and the external half (the daemon working the
//! `litellm.migrate_user`, `stripe.migrate_customer` and `secrets.reencrypt`
//! actions against the in-process simulators).
//!
//! The legacy data is generated set-based in SQL: per user a `user_settings`
//! row and about 20 related rows (6 conversations, a Stripe customer for half
//! of them, 2 Slack users, 2 Slack conversations, 3 API keys, 2 custom
//! secrets, 2 billing sessions, 2 repositories, a GitLab webhook, and an
//! org-less `conversation_metadata_saas` row for a quarter of them), with
//! real legacy ciphertext (made here, since the database cannot encrypt) in a
//! fraction of the secret columns.

use super::{percentile, BenchEnv};
use crate::litellm::LiteLlmSimulator;
use crate::secrets::Keyring;
use crate::stripe::StripeSimulator;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

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
    let legacy_key = crate::secrets::generate_key();
    let keyring = Keyring::new(&current_key, &[], Some(&legacy_key))?;
    let ciphertexts = Ciphertexts::new(&keyring)?;
    let pool = crate::db::connect(&env.url, 8).await?;

    // ---------------------------------------------------------------- data
    println!(
        "generating {} legacy users (~20 related rows each)",
        args.users
    );
    let started = Instant::now();
    let rows = generate(&pool, 1, args.users, &ciphertexts).await?;
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
    let external = external_phase(
        &args,
        &mut env,
        &pool,
        &ciphertexts,
        &current_key,
        &legacy_key,
    )
    .await?;

    pool.close().await;
    env.finish()?;

    println!("summary");
    println!("  database, 1 session  {users_per_s_db:>10.0} users/s  (target >= 2000)");
    println!("  database, 2 sessions {users_per_s_db_2:>10.0} users/s  (target >= 2000)");
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

/// A few real ciphertexts, reused across users: the database cannot encrypt,
/// and encrypting millions of values would measure this process, not the
/// migration.
struct Ciphertexts {
    legacy: Vec<String>,
    current: Vec<String>,
}

impl Ciphertexts {
    fn new(keyring: &Keyring) -> anyhow::Result<Self> {
        let plain = |i: usize| SecretString::from(format!("sk-bench-legacy-secret-{i:04}"));
        Ok(Ciphertexts {
            legacy: (0..16)
                .map(|i| keyring.encrypt_legacy(&plain(i)))
                .collect::<Result<_, _>>()?,
            // Bound to no real row: only their format matters to the
            // migration (they are already orgkeeper's and stay as they are).
            current: (0..16)
                .map(|i| {
                    let place = crate::secrets::Place::new("bench", "filler", i.to_string());
                    keyring.encrypt(&place, &plain(100 + i))
                })
                .collect(),
        })
    }
}

/// The user id of generated user `g` (deterministic, spread over the id space).
const UID: &str = "md5('orgkeeper-bench-user:' || g)::uuid";

/// `$1`/`$2` are the first and last user number, `$3` legacy and `$4`
/// current ciphertexts. About 30 % of users have a legacy `llm_api_key`
/// (and so a legacy key on the owner membership), 5 % a legacy
/// `search_api_key`, 30 % a legacy first custom secret and 20 % a legacy
/// GitLab webhook secret; the other secrets are current-format ciphertext.
fn generator_statements() -> Vec<(&'static str, String)> {
    let legacy = "$3::text[])[1 + g % cardinality($3::text[])]";
    let current = "$4::text[])[1 + (g + k) % cardinality($4::text[])]";
    let users = "generate_series($1::int, $2::int) g";
    vec![
        (
            "user_settings",
            format!(
                "INSERT INTO orgkeeper.user_settings
                   (user_id, email, language, agent, max_iterations, confirmation_mode,
                    llm_model, llm_api_key, search_api_key, enable_default_condenser,
                    enable_sound_notifications, user_consents_to_analytics, accepted_tos,
                    mcp_config, max_budget_per_task, user_version, billing_margin)
                 SELECT {UID}, 'bench-user-' || g || '@example.com',
                        (ARRAY['en', 'de', 'fr', 'ja'])[1 + g % 4], 'CodeActAgent', 100 + (g % 3) * 50,
                        g % 2 = 0, 'litellm_proxy/claude-sonnet-4',
                        CASE WHEN g % 10 < 3 THEN ({legacy} END,
                        CASE WHEN g % 20 = 5 THEN ({legacy} END,
                        true, g % 3 = 0, CASE WHEN g % 4 <> 0 THEN true END,
                        now() - (g % 1000) * interval '1 hour',
                        CASE WHEN g % 7 = 0 THEN jsonb_build_object('sse_servers', jsonb_build_array('https://mcp.example.com/' || g)) END,
                        CASE WHEN g % 4 = 0 THEN 5.0 END,
                        2 + g % 4,
                        CASE WHEN g % 5 = 0 THEN 1.2 WHEN g % 5 = 1 THEN 1.0 END
                   FROM {users}"
            ),
        ),
        (
            "conversation_metadata",
            format!(
                "INSERT INTO orgkeeper.conversation_metadata
                   (conversation_id, user_id, selected_repository, selected_branch, git_provider,
                    title, trigger, accumulated_cost, prompt_tokens, completion_tokens, total_tokens,
                    llm_model, last_updated_at, created_at)
                 SELECT 'bench-' || g || '-' || k, {UID}, 'acme/repo-' || (g % 500), 'main', 'github',
                        'Conversation ' || k || ' of user ' || g, 'gui', (g % 97) * 0.01 * k,
                        1000 * k, 200 * k, 1200 * k, 'litellm_proxy/claude-sonnet-4',
                        now() - k * interval '1 day', now() - k * interval '2 days'
                   FROM {users}, generate_series(1, 6) k"
            ),
        ),
        (
            "conversation_metadata_saas",
            format!(
                "INSERT INTO orgkeeper.conversation_metadata_saas (conversation_id, user_id, created_at)
                 SELECT 'bench-' || g || '-1', {UID}, now() - interval '2 days'
                   FROM {users} WHERE g % 4 = 0"
            ),
        ),
        (
            "stripe_customers",
            format!(
                "INSERT INTO orgkeeper.stripe_customers (user_id, stripe_customer_id)
                 SELECT {UID}, 'cus_bench' || g FROM {users} WHERE g % 2 = 0"
            ),
        ),
        (
            "slack_users",
            format!(
                "INSERT INTO orgkeeper.slack_users (user_id, slack_user_id, slack_display_name)
                 SELECT {UID}, 'U' || g || 'X' || k, 'user ' || g FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "slack_conversation",
            format!(
                "INSERT INTO orgkeeper.slack_conversation (conversation_id, channel_id, user_id, parent_id)
                 SELECT 'bench-' || g || '-' || k, 'C' || (g % 100), {UID}, g || '.' || k
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "api_keys",
            format!(
                "INSERT INTO orgkeeper.api_keys (key_hash, user_id, name, last_used_at, expires_at)
                 SELECT md5('key:' || g || ':' || k), {UID}, 'key ' || k,
                        now() - k * interval '3 hours', now() + interval '90 days'
                   FROM {users}, generate_series(1, 3) k"
            ),
        ),
        (
            "custom_secrets",
            format!(
                "INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value, description)
                 SELECT {UID}, 'SECRET_' || k,
                        CASE WHEN k = 1 AND g % 10 < 3 THEN ({legacy} ELSE ({current} END,
                        'generated by orgkeeper bench migrate'
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "billing_sessions",
            format!(
                "INSERT INTO orgkeeper.billing_sessions
                   (id, user_id, status, billing_session_type, price, price_code)
                 SELECT 'bs-' || g || '-' || k, {UID},
                        CASE WHEN k = 1 AND g % 3 = 0 THEN 'completed'
                             WHEN k = 1 THEN 'cancelled' ELSE 'in_progress' END,
                        'DIRECT_PAYMENT', 10 * k, 'price_' || k
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "user_repos",
            format!(
                "INSERT INTO orgkeeper.user_repos (user_id, repo_id, admin)
                 SELECT {UID}, 'acme/repo-' || ((2 * g + k) % 1000), k = 1
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "gitlab_webhook",
            format!(
                "INSERT INTO orgkeeper.gitlab_webhook
                   (group_id, project_id, user_id, webhook_exists, webhook_url, webhook_secret,
                    webhook_uuid, scopes, last_synced)
                 SELECT 'group-' || (g % 200), 'project-' || g, {UID}, true,
                        'https://hooks.example.com/gitlab/' || g,
                        CASE WHEN g % 10 < 2 THEN ({legacy} ELSE ({current} END,
                        md5('hook:' || g), ARRAY['api', 'read_repository'], now() - interval '1 day'
                   FROM {users}, generate_series(1, 1) k"
            ),
        ),
    ]
}

/// Inserts users `first..first+n` with their related rows, one statement per
/// table, the tables in parallel. Returns the number of rows inserted.
async fn generate(pool: &PgPool, first: u32, n: u32, ct: &Ciphertexts) -> anyhow::Result<u64> {
    let last = first as i64 + n as i64 - 1;
    let statements = generator_statements();
    let bar = progress(statements.len() as u64, "tables");
    let mut tasks = tokio::task::JoinSet::new();
    for (table, sql) in statements {
        let (pool, bar) = (pool.clone(), bar.clone());
        let (legacy, current) = (ct.legacy.clone(), ct.current.clone());
        tasks.spawn(async move {
            let done = sqlx::query(&sql)
                .bind(first as i32)
                .bind(last as i32)
                .bind(legacy)
                .bind(current)
                .execute(&pool)
                .await
                .with_context(|| format!("generating {table}"))?;
            bar.inc(1);
            Ok::<_, anyhow::Error>(done.rows_affected())
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done??;
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// VACUUM ANALYZE of the generated tables, as a settled legacy database
/// would be (visibility map set, statistics current).
async fn vacuum_analyze(pool: &PgPool) -> anyhow::Result<()> {
    let tables = generator_statements()
        .iter()
        .map(|(t, _)| format!("orgkeeper.{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!("VACUUM (ANALYZE) {tables}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// The users generated as numbers `first..first+n`, with their emails.
async fn generated_users(pool: &PgPool, first: u32, n: u32) -> anyhow::Result<Vec<(Uuid, String)>> {
    let rows = sqlx::query_as(&format!(
        "SELECT s.user_id, s.email
           FROM generate_series($1::int, $2::int) g
           JOIN orgkeeper.user_settings s ON s.user_id = {UID}
          ORDER BY g"
    ))
    .bind(first as i32)
    .bind((first as i64 + n as i64 - 1) as i32)
    .fetch_all(pool)
    .await?;
    Ok(rows)
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
/// many users are migrated.
async fn migrate_sessions(
    url: &str,
    batch: i32,
    sessions: usize,
    limit: Option<u64>,
    expected: u64,
) -> anyhow::Result<DbPhase> {
    let migrated = Arc::new(AtomicU64::new(0));
    let bar = progress(expected, "users");
    let mut conns = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        conns.push(PgConnection::connect(url).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (migrated, bar) = (migrated.clone(), bar.clone());
        tasks.spawn(async move {
            let mut batch_ms = Vec::new();
            while limit.is_none_or(|l| migrated.load(Ordering::SeqCst) < l) {
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
                bar.inc(n as u64);
            }
            conn.close().await?;
            Ok::<_, anyhow::Error>(batch_ms)
        });
    }
    let mut batch_ms = Vec::new();
    while let Some(done) = tasks.join_next().await {
        batch_ms.extend(done??);
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
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
}

/// Generates `--external-users` more users, seeds their LiteLLM budgets and
/// keys and their Stripe customers, cancels the actions left by the database
/// phases, migrates them, then starts the daemon and times it until every
/// one of their actions is finished.
async fn external_phase(
    args: &MigrateArgs,
    env: &mut BenchEnv,
    pool: &PgPool,
    ct: &Ciphertexts,
    current_key: &SecretString,
    legacy_key: &SecretString,
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

    generate(pool, first, n, ct).await?;
    let users = generated_users(pool, first, n).await?;
    let litellm = LiteLlmSimulator::start_local().await?;
    let stripe = StripeSimulator::start_local().await?;
    for (i, (user, email)) in users.iter().enumerate() {
        let user = user.to_string();
        let keys: Vec<String> = (0..1 + i % 2)
            .map(|k| format!("sk-bench-{}-{k}", &user))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let budget = (i % 7 != 6).then_some(10.0 + (i % 50) as f64);
        litellm.seed_user(&user, Some(email), budget, (i % 9) as f64 * 1.25, &keys);
    }
    let customers: Vec<(i64, Uuid, String)> = sqlx::query_as(
        "SELECT c.id, c.user_id, s.email
           FROM orgkeeper.stripe_customers c JOIN orgkeeper.user_settings s USING (user_id)
          WHERE c.user_id = ANY ($1)",
    )
    .bind(users.iter().map(|(u, _)| *u).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let (ids, cus): (Vec<i64>, Vec<String>) = customers
        .iter()
        .map(|(id, user, email)| {
            let user = user.to_string();
            (
                *id,
                stripe.seed_customer(Some(email), &[("user_id", user.as_str())]),
            )
        })
        .unzip();
    sqlx::query(
        "UPDATE orgkeeper.stripe_customers c SET stripe_customer_id = v.cus
           FROM unnest($1::bigint[], $2::text[]) AS v(id, cus) WHERE c.id = v.id",
    )
    .bind(&ids)
    .bind(&cus)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE orgkeeper.user_settings, orgkeeper.stripe_customers")
        .execute(pool)
        .await?;

    let first_action: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(id), 0) + 1 FROM orgkeeper.pending_external_actions",
    )
    .fetch_one(pool)
    .await?;
    let db = migrate_sessions(&env.url, args.batch, 1, None, u64::from(n)).await?;
    println!(
        "  migrated (database)  {:>10}  users ({:.0} users/s)",
        db.migrated,
        db.users_per_s()
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
            "ORGKEEPER_LEGACY_SECRET_KEY",
            legacy_key.expose_secret().to_string(),
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
    let (mut finished, mut last_progress) = (0i64, Instant::now());
    while finished < total {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orgkeeper.pending_external_actions
              WHERE id >= $1 AND finished_at IS NOT NULL",
        )
        .bind(first_action)
        .fetch_one(pool)
        .await?;
        if now > finished {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            bar.println(format!(
                "  WARNING: no action finished for {} s; giving up with {} unfinished",
                STALL.as_secs(),
                total - now
            ));
            break;
        }
        finished = now;
        bar.set_position(finished as u64);
    }
    let mut secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
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
    .bind(users.iter().map(|(u, _)| *u).collect::<Vec<_>>())
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

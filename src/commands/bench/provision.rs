//! `orgkeeper bench provision`: how fast organizations go from INSERT to
//! `active`, against the in-process LiteLLM simulator answering instantly.

use super::{percentile, BenchEnv};
use crate::litellm::LiteLlmSimulator;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the provisioning benchmark.
#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// Organizations inserted for the throughput figures
    #[arg(long, default_value_t = 20_000)]
    pub orgs: usize,
    /// Connections inserting at once
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Insert rate for the latency figures (orgs per second)
    #[arg(long, default_value_t = 50)]
    pub light_rate: u32,
    /// How long the light load lasts, in seconds
    #[arg(long, default_value_t = 10)]
    pub light_secs: u64,
    /// Length of the sustained run, in seconds (its first and last minute are compared)
    #[arg(long, default_value_t = 300)]
    pub sustained_secs: u64,
    /// The daemon's concurrency
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Rows inserted for each of the two peer figures (plain one-row INSERT,
    /// org INSERT alone), measured before the daemon starts
    #[arg(long, default_value_t = 10_000)]
    pub peer_inserts: usize,
    /// Use this server (a fresh database is created on it) instead of a private cluster
    #[arg(long, env = "BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Then run the graphile-worker peer from this directory (after `npm ci`
    /// there; bench/peers/graphile-worker) on the same server, daemon stopped,
    /// with as many jobs and connections, and compare provisioned orgs/s with
    /// its jobs/s
    #[arg(long, value_name = "DIR")]
    pub graphile_peer: Option<std::path::PathBuf>,
    /// End the output with one JSON object of the figures
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: ProvisionArgs) -> anyhow::Result<()> {
    let mut env = BenchEnv::start(args.database_url.as_deref()).await?;
    let pool = crate::db::connect(&env.url, args.clients as u32 + 2).await?;

    println!(
        "peers: {} plain one-row INSERTs vs {} org INSERTs alone, {} connections, daemon stopped",
        args.peer_inserts, args.peer_inserts, args.clients
    );
    let (plain_insert_per_s, org_insert_only_per_s) =
        peer_inserts(&pool, args.peer_inserts, args.clients).await?;
    println!("  plain inserts/s      {plain_insert_per_s:>10.0}");
    println!(
        "  org inserts alone/s  {org_insert_only_per_s:>10.0}  ({:.0} % of plain)",
        100.0 * org_insert_only_per_s / plain_insert_per_s
    );

    let sim = LiteLlmSimulator::start_local().await?;
    env.spawn_daemon(&[
        ("LITELLM_BASE_URL", sim.base_url()),
        ("LITELLM_MASTER_KEY", sim.master_key()),
        (
            "ORGKEEPER_SECRET_KEY",
            crate::secrets::generate_key().expose_secret().to_string(),
        ),
        ("ORGKEEPER_CONCURRENCY", args.concurrency.to_string()),
    ])?;

    println!(
        "throughput: inserting {} orgs from {} connections",
        args.orgs, args.clients
    );
    let started = Instant::now();
    insert_all(&pool, "bench", args.orgs, args.clients, None).await?;
    let insert_secs = started.elapsed().as_secs_f64();
    wait_active(&pool, args.orgs as i64).await?;
    let total_secs = started.elapsed().as_secs_f64();
    let inserts_per_s = args.orgs as f64 / insert_secs;
    let provisioned_per_s = args.orgs as f64 / total_secs;
    println!("  inserts/s            {inserts_per_s:>10.0}");
    println!("  provisioned orgs/s   {provisioned_per_s:>10.0}  (first insert to last active)");

    println!(
        "latency: {} orgs/s for {} s",
        args.light_rate, args.light_secs
    );
    let (p50, p99) = light_load_latency(&pool, args.light_rate, args.light_secs).await?;
    println!("  insert->active p50   {p50:>10.1} ms");
    println!("  insert->active p99   {p99:>10.1} ms");

    println!(
        "sustained: {} s at full insert speed (backlog capped at 5000)",
        args.sustained_secs
    );
    let sustained_ratio = sustained(&pool, args.clients, args.sustained_secs).await?;
    println!("  last/first minute    {sustained_ratio:>10.2}");

    let peak_rss_mb = env.daemon_peak_rss_mb().unwrap_or(f64::NAN);
    println!("  daemon peak RSS      {peak_rss_mb:>10.1} MB");
    pool.close().await;
    sim.shutdown().await;
    env.stop_daemon()?;
    // A failed peer is reported, not fatal: the figures above stand.
    let (peer_jobs_per_s, peer_error) = match &args.graphile_peer {
        Some(dir) => {
            println!(
                "peer: graphile-worker, {} no-op jobs added by {} connections, one worker",
                args.orgs, args.clients
            );
            match graphile_peer(dir, &env.admin_url, args.orgs, args.clients).await {
                Ok(jobs_per_s) => {
                    println!("  jobs/s               {jobs_per_s:>10.0}");
                    println!(
                        "  provisioned / jobs   {:>10.2}",
                        provisioned_per_s / jobs_per_s
                    );
                    (Some(jobs_per_s), None)
                }
                Err(e) => {
                    println!("  the peer did not run: {e:#}");
                    (None, Some(format!("{e:#}")))
                }
            }
        }
        None => (None, None),
    };
    env.finish().await?;
    if args.json {
        println!(
            "{}",
            json!({
                "plain_insert_per_s": round1(plain_insert_per_s),
                "org_insert_only_per_s": round1(org_insert_only_per_s),
                "org_insert_only_ratio": (org_insert_only_per_s / plain_insert_per_s * 100.0).round() / 100.0,
                "inserts_per_s": round1(inserts_per_s),
                "provisioned_per_s": round1(provisioned_per_s),
                "latency_p50_ms": round1(p50),
                "latency_p99_ms": round1(p99),
                "peak_rss_mb": round1(peak_rss_mb),
                "sustained_ratio": (sustained_ratio * 100.0).round() / 100.0,
                "peer_jobs_per_s": peer_jobs_per_s.map(round1),
                "provisioned_vs_peer": peer_jobs_per_s.map(|p| (provisioned_per_s / p * 100.0).round() / 100.0),
                "peer_error": peer_error,
            })
        );
    }
    Ok(())
}

/// Runs the graphile-worker peer (`run.mjs` in `dir`) against the server
/// at `admin_url` and returns its jobs/s.
async fn graphile_peer(
    dir: &std::path::Path,
    admin_url: &str,
    jobs: usize,
    clients: usize,
) -> anyhow::Result<f64> {
    use anyhow::Context;
    anyhow::ensure!(
        dir.join("node_modules").is_dir(),
        "{} has no node_modules: run `npm ci` there first (Node.js 20 or later)",
        dir.display()
    );
    let out = tokio::process::Command::new("node")
        .arg("run.mjs")
        .current_dir(dir)
        .env("BENCH_DATABASE_URL", admin_url)
        .env("JOBS", jobs.to_string())
        .env("CLIENTS", clients.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context(
            "cannot run `node` for the graphile-worker peer (is Node.js 20 or later installed?)",
        )?;
    anyhow::ensure!(
        out.status.success(),
        "the graphile-worker peer failed ({}); its errors are above",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let figures: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("the graphile-worker peer printed no JSON line")?;
    figures["jobs_per_s"]
        .as_f64()
        .context("the graphile-worker peer's JSON has no jobs_per_s")
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The peer figures, daemon stopped: one-row INSERTs per second into a plain
/// table (uuid key, unique `lower(name)` index) and org INSERTs per second
/// with their creators' users rows already there (one creator per org,
/// inserted untimed), from `clients` connections, one transaction each.
/// The two alternate in three rounds, so drift on a shared machine hits both.
/// The org inserts' outbox actions are cancelled afterwards: they are not
/// part of the provisioning figures.
async fn peer_inserts(pool: &PgPool, n: usize, clients: usize) -> anyhow::Result<(f64, f64)> {
    sqlx::query(
        "CREATE TABLE public.bench_plain (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text NOT NULL)",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE UNIQUE INDEX bench_plain_name ON public.bench_plain (lower(name))")
        .execute(pool)
        .await?;
    let creators: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO orgkeeper.users (id) SELECT gen_random_uuid() FROM generate_series(1, $1) RETURNING id",
    )
    .bind(n as i64)
    .fetch_all(pool)
    .await?;
    let creators = Arc::new(creators);
    let rounds = 3;
    let (mut plain_secs, mut org_secs) = (0.0, 0.0);
    for round in 0..rounds {
        let (from, to) = (n * round / rounds, n * (round + 1) / rounds);
        let started = Instant::now();
        let p = pool.clone();
        run_clients(clients, from, to, move |i| {
            let pool = p.clone();
            async move {
                sqlx::query("INSERT INTO public.bench_plain (name) VALUES ($1)")
                    .bind(format!("plain {i} {}", uuid::Uuid::new_v4().simple()))
                    .execute(&pool)
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        plain_secs += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let (p, c) = (pool.clone(), creators.clone());
        run_clients(clients, from, to, move |i| {
            let (pool, creators) = (p.clone(), c.clone());
            async move {
                sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2)")
                    .bind(format!("peer {i} {}", uuid::Uuid::new_v4().simple()))
                    .bind(creators[i])
                    .execute(&pool)
                    .await
                    .map(|_| ())
            }
        })
        .await?;
        org_secs += started.elapsed().as_secs_f64();
    }
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET status = 'cancelled', finished_at = now()
          WHERE status = 'pending'",
    )
    .execute(pool)
    .await?;
    Ok((n as f64 / plain_secs, n as f64 / org_secs))
}

/// Runs `op(i)` for every i in `from..to` from `clients` concurrent tasks.
async fn run_clients<F, Fut>(clients: usize, from: usize, to: usize, op: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next, op) = (next.clone(), op.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return Ok::<_, sqlx::Error>(());
                }
                op(i).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Inserts `n` orgs from `clients` connections, one transaction each, as
/// applications do. With `pause`, inserters wait while it is set.
async fn insert_all(
    pool: &PgPool,
    prefix: &str,
    n: usize,
    clients: usize,
    pause: Option<Arc<AtomicBool>>,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let bar = progress(n as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (pool, next, bar, pause, prefix) = (
            pool.clone(),
            next.clone(),
            bar.clone(),
            pause.clone(),
            prefix.to_string(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, sqlx::Error>(());
                }
                while pause.as_ref().is_some_and(|p| p.load(Ordering::Relaxed)) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sqlx::query(
                    "WITH u AS (INSERT INTO orgkeeper.users (id) VALUES (gen_random_uuid()) RETURNING id)
                     INSERT INTO orgkeeper.org (name, created_by) SELECT $1, u.id FROM u",
                )
                .bind(format!("{prefix} {i} {}", uuid::Uuid::new_v4().simple()))
                .execute(&pool)
                .await?;
                bar.inc(1);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    bar.finish_and_clear();
    Ok(())
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid progress template"),
    );
    bar
}

async fn wait_active(pool: &PgPool, n: i64) -> anyhow::Result<()> {
    loop {
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orgkeeper.org WHERE provisioning_status = 'active'",
        )
        .fetch_one(pool)
        .await?;
        if active >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Inserts at `rate`/s for `secs` and returns the p50 and p99 of
/// insert-to-active latency (org created_at to the write-back's updated_at).
async fn light_load_latency(pool: &PgPool, rate: u32, secs: u64) -> anyhow::Result<(f64, f64)> {
    // Active ones only: the peer figures' orgs stay pending (their actions
    // were cancelled).
    let before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.org WHERE provisioning_status = 'active'",
    )
    .fetch_one(pool)
    .await?;
    let n = rate as u64 * secs;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let bar = progress(n);
    for i in 0..n {
        tick.tick().await;
        let pool = pool.clone();
        tokio::spawn(async move {
            let _ = sqlx::query(
                "WITH u AS (INSERT INTO orgkeeper.users (id) VALUES (gen_random_uuid()) RETURNING id)
                     INSERT INTO orgkeeper.org (name, created_by) SELECT $1, u.id FROM u",
            )
            .bind(format!("light {i} {}", uuid::Uuid::new_v4().simple()))
            .execute(&pool)
            .await;
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    wait_active(pool, before + n as i64).await?;
    let mut latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM updated_at - created_at)::float8 * 1000
           FROM orgkeeper.org WHERE name LIKE 'light %'",
    )
    .fetch_all(pool)
    .await?;
    latencies.sort_by(f64::total_cmp);
    Ok((percentile(&latencies, 50.0), percentile(&latencies, 99.0)))
}

/// Inserts at full speed for `secs` (pausing while more than 5000 wait) and
/// returns the provisioning rate of the last minute over that of the first.
async fn sustained(pool: &PgPool, clients: usize, secs: u64) -> anyhow::Result<f64> {
    let pause = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (pool, pause, stop) = (pool.clone(), pause.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE status = 'pending'",
                )
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                pause.store(waiting > 5000, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let inserting = tokio::spawn({
        let pool = pool.clone();
        let pause = pause.clone();
        async move { insert_all(&pool, "sustained", usize::MAX / 2, clients, Some(pause)).await }
    });
    tokio::time::sleep(Duration::from_secs(secs)).await;
    inserting.abort();
    stop.store(true, Ordering::Relaxed);
    let _ = monitor.await;
    let window = secs.min(60) as f64;
    let rate = |from: f64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM orgkeeper.org
                  WHERE provisioning_status = 'active'
                    AND updated_at >= $1 + make_interval(secs => $2)
                    AND updated_at <  $1 + make_interval(secs => $2 + $3)",
            )
            .bind(start)
            .bind(from)
            .bind(window)
            .fetch_one(&pool)
            .await
        }
    };
    let first = rate(0.0).await? as f64;
    let last = rate(secs as f64 - window).await? as f64;
    println!(
        "  first minute         {:>10.0} orgs/s\n  last minute          {:>10.0} orgs/s",
        first / window,
        last / window
    );
    Ok(if first > 0.0 { last / first } else { f64::NAN })
}

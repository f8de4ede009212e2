//! Stories of running orgkeeper like a product: the embedded `dev`
//! environment, signals, health and metrics, and configuration errors.

use crate::support::{
    daemon_config, daemon_settings, insert_orgs, status_counts, wait_until, TestDaemon, TestDb,
};
use orgkeeper::litellm::{Faults, LiteLlmSimulator};
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orgkeeper");
const LONG: Duration = Duration::from_secs(60);

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a child to exit within `timeout`; returns its exit status.
fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn dev_runs_everything_and_ctrl_c_leaves_nothing_behind() {
    let mut child = Command::new(BIN)
        .arg("dev")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut dir) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("database   psql ") {
            url = Some(rest.trim_matches('"').to_string());
        }
        if let Some(rest) = line.trim().strip_prefix("cluster    ") {
            dir = Some(std::path::PathBuf::from(rest));
        }
        if line.starts_with("Try, in psql") {
            break;
        }
    }
    let (url, dir) = (url.expect("a psql line"), dir.expect("a cluster line"));
    assert!(dir.exists());

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("WITH u AS (INSERT INTO orgkeeper.users (id, email) VALUES (gen_random_uuid(), 'ada@example.com') RETURNING id)
                 INSERT INTO orgkeeper.org (name, created_by) SELECT 'Acme', id FROM u")
        .execute(&pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "Acme to become active", || async {
        status_counts(&pool).await.get("active") == Some(&1)
    })
    .await;
    pool.close().await;

    signal(child.id(), "-INT");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "dev exits cleanly on Ctrl-C: {status:?}");
    assert!(!dir.exists(), "the cluster directory is removed");
    let server = format!("bin/postgres -D {}", dir.join("data").display());
    let leftovers = Command::new("pgrep")
        .args(["-f", &server])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty(), "no server process is left");
}

#[tokio::test]
async fn sigterm_during_a_burst_exits_within_the_deadline_and_a_restart_finishes_the_rest() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        latency_ms: (100, 300),
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    insert_orgs(&db.pool, "Burst", 300).await;
    let spawn = || {
        Command::new(BIN)
            .arg("listen")
            .env("DATABASE_URL", &db.url)
            .env("LITELLM_BASE_URL", sim.base_url())
            .env("LITELLM_MASTER_KEY", sim.master_key())
            .env("ORGKEEPER_SECRET_KEY", key.expose_secret())
            .env("ORGKEEPER_METRICS_ADDR", "off")
            .env("ORGKEEPER_SHUTDOWN_GRACE_SECS", "2")
            .env("ORGKEEPER_CONCURRENCY", "16")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    wait_until(LONG, "work in flight", || async {
        status_counts(&db.pool)
            .await
            .get("active")
            .copied()
            .unwrap_or(0)
            >= 10
    })
    .await;
    let sent = Instant::now();
    signal(first.id(), "-TERM");
    let status = wait_exit(&mut first, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "exited within its 2 s grace (+ margin): {:?}",
        sent.elapsed()
    );
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE status = 'running' OR locked_by IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(running, 0, "nothing left running or leased after shutdown");
    let active = status_counts(&db.pool)
        .await
        .get("active")
        .copied()
        .unwrap_or(0);
    assert!(active < 300, "the burst was interrupted ({active} active)");

    sim.set_faults(Faults::default());
    let mut second = spawn();
    wait_until(LONG, "a restarted daemon finishes the rest", || async {
        status_counts(&db.pool).await.get("active") == Some(&300)
    })
    .await;
    signal(second.id(), "-TERM");
    wait_exit(&mut second, Duration::from_secs(10));
    assert_eq!(sim.stats().teams, 300);
}

/// The value of the first sample of `metric` with all of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(metric) && labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Checks the Prometheus text format line by line: HELP/TYPE comments, and
/// samples `name{label="value",…} number`.
fn assert_prometheus_text(text: &str) {
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line:?}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end + 1..series.len() - 1];
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name in {line:?}"
                );
                assert!(!v.contains('\n'));
            }
        }
    }
}

#[tokio::test]
async fn metrics_move_with_work_and_healthz_fails_without_the_database() {
    let cluster =
        orgkeeper::pgcluster::PgCluster::start(orgkeeper::pgcluster::Durability::Throwaway)
            .unwrap();
    let url = cluster.url("postgres");
    orgkeeper::db::migrate(&url).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let port = orgkeeper::pgcluster::free_port().expect("a free port");
    let mut settings = daemon_settings("w1", Duration::from_secs(30));
    settings.metrics_addr = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let d = TestDaemon::start(daemon_config(
        &url,
        &sim,
        &orgkeeper::secrets::generate_key(),
        settings,
    ));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(LONG, "the endpoint to answer", || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let before = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_prometheus_text(&before);
    let done = ["kind=\"litellm.provision_org\"", "outcome=\"done\""];
    assert_eq!(sample(&before, "orgkeeper_actions_total", &done), None);

    insert_orgs(&pool, "Metered", 5).await;
    wait_until(LONG, "5 active", || async {
        status_counts(&pool).await.get("active") == Some(&5)
    })
    .await;
    let after = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_prometheus_text(&after);
    assert_eq!(sample(&after, "orgkeeper_actions_total", &done), Some(5.0));
    assert!(
        sample(
            &after,
            "orgkeeper_external_call_duration_seconds_count",
            &["call=\"team_new\""]
        )
        .unwrap()
            >= 5.0
    );
    assert!(sample(&after, "orgkeeper_claim_duration_seconds_count", &[]).unwrap() >= 1.0);
    assert_eq!(
        sample(&after, "orgkeeper_queue_depth", &["status=\"pending\""]),
        Some(0.0)
    );

    cluster.pause().unwrap();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert!(health
        .text()
        .await
        .unwrap()
        .contains("database unreachable"));
    cluster.resume().unwrap();
    wait_until(LONG, "healthy again", || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    d.stop().await;
}

/// Runs `orgkeeper listen` with exactly `env` and returns (exit code, stderr).
fn listen_with(env: &[(&str, &str)], extra: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("listen")
        .args(extra)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn missing_or_malformed_settings_give_one_line_naming_the_setting_and_exit_2() {
    let key = orgkeeper::secrets::generate_key();
    let good: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("LITELLM_BASE_URL", "http://127.0.0.1:4000"),
        ("LITELLM_MASTER_KEY", "sk-master-key-0123456789"),
        ("ORGKEEPER_SECRET_KEY", key.expose_secret()),
    ];
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("DATABASE_URL", None),
        ("DATABASE_URL", Some("mysql://x")),
        ("LITELLM_BASE_URL", None),
        ("LITELLM_BASE_URL", Some("not a url")),
        ("LITELLM_MASTER_KEY", None),
        ("LITELLM_MASTER_KEY", Some("master")),
        ("ORGKEEPER_SECRET_KEY", None),
        ("ORGKEEPER_SECRET_KEY", Some("c2hvcnQ=")),
        ("LITELLM_AUTH_HEADER", Some("x-wrong")),
        ("ORGKEEPER_METRICS_ADDR", Some("everywhere")),
        ("ORGKEEPER_CONCURRENCY", Some("0")),
        ("STRIPE_API_KEY", Some("pk_live_public")),
        ("ORGKEEPER_LISTEN_DATABASE_URL", Some("mysql://x")),
    ];
    for (setting, value) in cases {
        let mut env: Vec<(&str, &str)> = good
            .iter()
            .filter(|(k, _)| *k != setting)
            .copied()
            .collect();
        if let Some(v) = value {
            env.push((setting, v));
        }
        let (code, stderr) = listen_with(&env, &["--check"]);
        assert_eq!(code, 2, "{setting}={value:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(setting),
            "{setting}={value:?} named: {stderr}"
        );
        assert!(!stderr.contains(key.expose_secret()), "no secret echoed");
    }
}

#[tokio::test]
async fn listen_check_validates_and_exits() {
    let db = TestDb::migrated().await;
    let key = orgkeeper::secrets::generate_key();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("LITELLM_BASE_URL", "http://127.0.0.1:4000"),
        ("LITELLM_MASTER_KEY", "sk-master-key-0123456789"),
        ("ORGKEEPER_SECRET_KEY", key.expose_secret()),
    ];
    let (code, stderr) = listen_with(&env, &["--check"]);
    assert_eq!(code, 0, "{stderr}");
    let unmigrated = TestDb::empty().await;
    let env = [
        ("DATABASE_URL", unmigrated.url.as_str()),
        env[1],
        env[2],
        env[3],
    ];
    let (code, stderr) = listen_with(&env, &["--check"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("orgkeeper migrate"),
        "says what to run: {stderr}"
    );
}

#[tokio::test]
async fn an_operator_lists_shows_and_retries_a_failed_action() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        fail: vec![("key/generate".into(), 400)],
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    insert_orgs(&db.pool, "Rejected", 1).await;
    let d = TestDaemon::start(daemon_config(
        &db.url,
        &sim,
        &key,
        daemon_settings("w1", LONG),
    ));
    wait_until(LONG, "the org to fail", || async {
        status_counts(&db.pool).await.get("failed") == Some(&1)
    })
    .await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM orgkeeper.pending_external_actions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let actions = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("actions")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, list, _) = actions(&["list", "--status", "compensated"]);
    assert_eq!(code, 0);
    assert!(
        list.contains(&id.to_string()) && list.contains("litellm.provision_org"),
        "{list}"
    );
    let (code, show, _) = actions(&["show", &id.to_string()]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(shown["status"], "compensated");
    assert!(shown["errors"][0]["error"]
        .as_str()
        .unwrap()
        .contains("key/generate"));
    assert!(!show.contains(sim.master_key().as_str()));

    let (code, _, err) = actions(&["retry", "999999"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("action 999999 does not exist") && err.contains("SQLSTATE"),
        "{err}"
    );

    sim.set_faults(Faults::default());
    let (code, out, _) = actions(&["retry", &id.to_string()]);
    assert_eq!(code, 0, "{out}");
    wait_until(LONG, "the retried org to become active", || async {
        status_counts(&db.pool).await.get("active") == Some(&1)
    })
    .await;
    d.stop().await;
    let (status, errors): (String, i64) = sqlx::query_as(
        "SELECT status, jsonb_array_length(errors)::int8 FROM orgkeeper.pending_external_actions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "done");
    assert_eq!(errors, 1, "the first failure stays in the history");
}

//! The environment a benchmark runs in: a database (a private cluster with
//! PostgreSQL's default durability, or a fresh database on a given server)
//! and the daemon as a separate process, so its memory can be measured.

use crate::pgcluster::{Durability, PgCluster};
use anyhow::Context;
use std::process::{Child, Command, Stdio};

/// A migrated database for one benchmark run.
pub struct BenchEnv {
    /// Connection URL of the benchmark database.
    pub url: String,
    /// Connection URL the benchmark database was created from (the private
    /// cluster's `postgres` database, or the `--database-url` given).
    pub admin_url: String,
    cluster: Option<PgCluster>,
    daemon: Option<Child>,
}

impl BenchEnv {
    /// A fresh migrated database: on the server at `database_url`, or in a private cluster.
    pub async fn start(database_url: Option<&str>) -> anyhow::Result<Self> {
        let (admin_url, cluster) = match database_url {
            Some(url) => (url.to_string(), None),
            None => {
                let cluster =
                    tokio::task::spawn_blocking(|| PgCluster::start(Durability::Default)).await??;
                cluster.stop_when_process_exits(std::process::id())?;
                (cluster.url("postgres"), Some(cluster))
            }
        };
        let name = format!(
            "orgkeeper_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let admin = crate::db::connect(&admin_url, 1).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let mut parsed = reqwest::Url::parse(&admin_url)?;
        parsed.set_path(&format!("/{name}"));
        let url = parsed.to_string();
        crate::db::migrate(&url).await?;
        Ok(BenchEnv {
            url,
            admin_url,
            cluster,
            daemon: None,
        })
    }

    /// Starts `orgkeeper listen` as a child process with `env` added.
    pub fn spawn_daemon(&mut self, env: &[(&str, String)]) -> anyhow::Result<u32> {
        let exe = std::env::current_exe().context("cannot find the orgkeeper binary")?;
        let mut command = Command::new(exe);
        command
            .arg("listen")
            .env("DATABASE_URL", &self.url)
            .env("ORGKEEPER_METRICS_ADDR", "off")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().context("cannot start the daemon")?;
        let pid = child.id();
        self.daemon = Some(child);
        Ok(pid)
    }

    /// The daemon's peak resident memory so far (VmHWM), in MB.
    pub fn daemon_peak_rss_mb(&self) -> Option<f64> {
        let pid = self.daemon.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.daemon.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops everything the benchmark started; on a given server, drops the
    /// benchmark database.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stop_daemon()?;
        match self.cluster.take() {
            Some(cluster) => cluster.stop()?,
            None => {
                let name = reqwest::Url::parse(&self.url)?
                    .path()
                    .trim_start_matches('/')
                    .to_string();
                let admin = crate::db::connect(&self.admin_url, 1).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&admin)
                .await?;
                admin.close().await;
            }
        }
        Ok(())
    }
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        if let Some(child) = self.daemon.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

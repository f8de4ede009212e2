//! `orgkeeper listen`: assembles the daemon from validated settings and runs
//! it until SIGTERM or SIGINT.

use crate::config::{
    ConfigError, DaemonArgs, DaemonSettings, DatabaseArgs, ListenDatabaseArgs, LiteLlmArgs,
    LiteLlmSettings, SecretArgs, StripeArgs,
};
use crate::litellm::LiteLlmClient;
use crate::monitoring::Metrics;
use crate::outbox::handlers::Services;
use crate::outbox::{Daemon, Shutdown};
use crate::secrets::Keyring;
use crate::stripe::{StripeClient, StripeConfig};
use clap::Args;
use std::sync::Arc;

/// Everything `orgkeeper listen` reads.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    listen_database: ListenDatabaseArgs,
    #[command(flatten)]
    litellm: LiteLlmArgs,
    #[command(flatten)]
    stripe: StripeArgs,
    #[command(flatten)]
    secrets: SecretArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Validate the settings, check the database is reachable and migrated, then exit
    #[arg(long)]
    pub check: bool,
}

/// The daemon's validated configuration (its Debug output shows no secret).
pub struct DaemonConfig {
    /// The database (claims, write-backs): direct, or through a pooler.
    pub database_url: String,
    /// A direct connection for LISTEN when `database_url` is a pooler that
    /// cannot keep one (PgBouncer in transaction mode); None: `database_url`.
    pub listen_database_url: Option<String>,
    /// LiteLLM connection and provisioning defaults.
    pub litellm: LiteLlmSettings,
    /// Stripe, when configured.
    pub stripe: Option<StripeConfig>,
    /// Keys for secrets at rest.
    pub keyring: Keyring,
    /// Loop settings.
    pub daemon: DaemonSettings,
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("database_url", &crate::db::redact_url(&self.database_url))
            .field(
                "listen_database_url",
                &self
                    .listen_database_url
                    .as_deref()
                    .map(crate::db::redact_url),
            )
            .field("litellm", &self.litellm)
            .field("stripe", &self.stripe)
            .field("keyring", &self.keyring)
            .field("daemon", &self.daemon)
            .finish()
    }
}

impl ListenArgs {
    /// Validates every setting; the first problem is returned naming its setting.
    pub fn validate(&self) -> Result<DaemonConfig, ConfigError> {
        Ok(DaemonConfig {
            database_url: self.database.url()?,
            listen_database_url: self.listen_database.url()?,
            litellm: self.litellm.settings()?,
            stripe: self.stripe.settings()?,
            keyring: self.secrets.keyring()?,
            daemon: self.daemon.settings()?,
        })
    }
}

/// Connects, checks the schema, and builds the services the handlers share.
pub async fn services(config: DaemonConfig) -> anyhow::Result<(Arc<Services>, DaemonSettings)> {
    let connections = (config.daemon.concurrency as u32 / 2).clamp(4, 32) + 2;
    let pool = crate::db::connect_daemon(&config.database_url, connections).await?;
    crate::db::check_migrated(&pool).await?;
    let stripe = config.stripe.map(StripeClient::new).transpose()?;
    let services = Services {
        pool,
        litellm: LiteLlmClient::new(config.litellm.client)?,
        stripe,
        keyring: config.keyring,
        defaults: config.litellm.provisioning,
        metrics: Arc::new(Metrics::default()),
    };
    Ok((Arc::new(services), config.daemon))
}

/// Checks that the LISTEN connection (`ORGKEEPER_LISTEN_DATABASE_URL`) can
/// be made and can LISTEN, as `orgkeeper listen --check` does.
pub async fn check_listen(url: &str) -> anyhow::Result<()> {
    use sqlx::{Connection, Executor};
    let named = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "ORGKEEPER_LISTEN_DATABASE_URL: cannot LISTEN on {}: {e}",
            crate::db::redact_url(url)
        )
    };
    // One attempt, bounded (a pool would retry a refused connection for its whole acquire timeout).
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sqlx::PgConnection::connect(url),
    )
    .await
    .map_err(|e| named(&e))?
    .map_err(|e| named(&e))?;
    conn.execute("LISTEN orgkeeper_actions; UNLISTEN *")
        .await
        .map_err(|e| named(&e))?;
    conn.close().await?;
    Ok(())
}

/// Runs the daemon (and its /healthz and /metrics endpoint) until `shutdown`.
pub async fn run(config: DaemonConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let listen_url = config.listen_database_url.clone();
    let (services, settings) = services(config).await?;
    if let Some(addr) = settings.metrics_addr {
        let bound = crate::monitoring::serve(addr, services.pool.clone(), services.metrics.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e} (set ORGKEEPER_METRICS_ADDR to another address, or off)"))?;
        tracing::info!(%bound, "serving /healthz and /metrics");
    }
    Daemon::new(services, settings)
        .listen_on(listen_url)
        .run(shutdown)
        .await
}

/// A shutdown signal that turns true on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> Shutdown {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        let _ = tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}

//! `orgkeeper dev`: everything on this machine with no configuration — a
//! private PostgreSQL cluster, the LiteLLM and Stripe simulators, the daemon,
//! and a few pre-organization users to migrate, their secrets in OpenHands'
//! format — until Ctrl-C, which stops and removes all of it.

use crate::commands::listen::DaemonConfig;
use crate::config::{
    DaemonSettings, DeploymentSettingsArgs, LiteLlmSettings, ProvisioningDefaults,
};
use crate::litellm::{LiteLlmConfig, LiteLlmSimulator};
use crate::pgcluster::{Durability, PgCluster};
use crate::stripe::{StripeConfig, StripeSimulator};
use clap::Args;
use secrecy::SecretString;
use std::time::Duration;

/// Options of `orgkeeper dev`.
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Address for the daemon's /healthz and /metrics ("off" to disable)
    #[arg(
        long,
        env = "ORGKEEPER_DEV_METRICS_ADDR",
        default_value = "127.0.0.1:0"
    )]
    pub metrics_addr: String,
    /// Pre-organization (OpenHands) users to generate, ready for user migration
    #[arg(long, env = "ORGKEEPER_DEV_LEGACY_USERS", default_value_t = 20)]
    pub legacy_users: u32,
    /// Deployment settings to record after migrating (ORGKEEPER_BILLING=on:
    /// new team orgs get a customer at the Stripe simulator), and the
    /// org-creation policy to seed (ORGKEEPER_ALLOWED_DOMAINS, …).
    #[command(flatten)]
    pub settings: DeploymentSettingsArgs,
}

/// Runs the embedded environment until SIGINT/SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let settings = args.settings.settings()?;
    let seed = args.settings.policy_seed()?;
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(Durability::Throwaway)).await??;
    // If this process dies without cleaning up, the watchdog removes the cluster.
    cluster.stop_when_process_exits(std::process::id())?;
    let admin = crate::db::connect(&cluster.url("postgres"), 1).await?;
    sqlx::query("CREATE DATABASE orgkeeper")
        .execute(&admin)
        .await?;
    admin.close().await;
    let url = cluster.url("orgkeeper");
    crate::db::migrate(&url).await?;
    let applied = crate::db::apply_deployment_settings(&url, &settings).await?;
    crate::db::apply_policy_seed(&url, &seed).await?;

    let litellm = LiteLlmSimulator::start_local().await?;
    crate::db::apply_deployment_settings(
        &url,
        &[crate::config::litellm_base_url_setting(
            &litellm.base_url(),
            "orgkeeper dev",
        )?],
    )
    .await?;
    let stripe = StripeSimulator::start_local().await?;
    let metrics_addr = match args.metrics_addr.as_str() {
        "off" => None,
        addr => Some(addr.parse()?),
    };
    let secret_key = crate::secrets::generate_key();
    // The made-up legacy application's jwt_secret, for its generated users.
    let jwt_secret = crate::secrets::generate_key();
    if args.legacy_users > 0 {
        let pool = crate::db::connect(&url, 4).await?;
        let values = crate::legacy_data::LegacyValues::new(&jwt_secret);
        crate::legacy_data::generate(&pool, 1, args.legacy_users, &values, None).await?;
        let users = crate::legacy_data::users(&pool, 1, args.legacy_users).await?;
        crate::legacy_data::seed_simulators(&pool, &users, &litellm, &stripe).await?;
        pool.close().await;
    }
    let config = DaemonConfig {
        database_url: url.clone(),
        listen_database_url: None,
        litellm: LiteLlmSettings {
            client: LiteLlmConfig {
                base_url: litellm.base_url(),
                master_key: SecretString::from(litellm.master_key()),
                auth_header: "x-goog-api-key".into(),
                timeout: Duration::from_secs(10),
            },
            provisioning: ProvisioningDefaults {
                model: None,
                allowed_models: Vec::new(),
                llm_base_url: litellm.base_url(),
                team_max_budget: None,
                key_alias_prefix: "OpenHands Cloud".into(),
                legacy_team_id: None,
            },
        },
        stripe: Some(StripeConfig {
            base_url: stripe.base_url(),
            api_key: SecretString::from(stripe.api_key()),
            timeout: Duration::from_secs(10),
        }),
        keyring: crate::secrets::Keyring::new(&secret_key, &[], Some(&jwt_secret))?,
        daemon: DaemonSettings {
            concurrency: 32,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            max_attempts: 8,
            retry: crate::outbox::RetryPolicy {
                base: Duration::from_millis(200),
                max: Duration::from_secs(10),
            },
            shutdown_grace: Duration::from_secs(5),
            action_timeout: Duration::from_secs(60),
            worker_id: "dev".into(),
            metrics_addr,
        },
    };

    println!("orgkeeper dev is running (Ctrl-C stops it and removes everything it started)");
    println!();
    println!("  database   psql \"{url}\"");
    println!("  cluster    {}", cluster.dir().display());
    println!("  LiteLLM    {} (simulator)", litellm.base_url());
    println!("  Stripe     {} (simulator)", stripe.base_url());
    for setting in &applied {
        println!("  setting    {} = {}", setting.name, setting.value);
    }
    for entry in &seed {
        println!("  may create {} {}", entry.kind, entry.value);
    }
    println!();
    println!("Try, in psql:");
    println!("  WITH u AS (INSERT INTO orgkeeper.users (id, email) VALUES (gen_random_uuid(), 'ada@example.com') RETURNING id)");
    println!("    INSERT INTO orgkeeper.org (name, created_by) SELECT 'Acme', id FROM u;   -- the creator must exist first");
    println!("  SELECT name, provisioning_status, litellm_team_id FROM orgkeeper.org;   -- pending, then active");
    println!("  SELECT id, kind, status, attempts FROM orgkeeper.pending_external_actions;");
    if args.legacy_users > 0 {
        println!(
            "  SELECT orgkeeper.migrate_users(100);   -- the {} generated pre-organization users",
            args.legacy_users
        );
    }
    println!();

    let result =
        crate::commands::listen::run(config, crate::commands::listen::shutdown_on_signals()).await;
    litellm.shutdown().await;
    stripe.shutdown().await;
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    println!("orgkeeper dev stopped; the cluster was removed");
    result
}

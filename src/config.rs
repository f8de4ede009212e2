//! Settings from flags and environment variables, validated once at start.
//!
//! Every setting is a flag that also reads an environment variable. A missing
//! or malformed setting becomes a [`ConfigError`] naming it; the CLI prints it
//! on one line and exits with code 2.

use clap::Args;
use secrecy::SecretString;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("{env} (--{flag}) {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub env: &'static str,
    /// The flag, without dashes.
    pub flag: &'static str,
    /// What is wrong and what to set.
    pub problem: String,
}

fn required<T: Clone>(
    value: &Option<T>,
    env: &'static str,
    flag: &'static str,
    what: &str,
) -> Result<T, ConfigError> {
    value.clone().ok_or_else(|| ConfigError {
        env,
        flag,
        problem: format!("is not set: {what}"),
    })
}

/// Where the database is.
#[derive(Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, e.g. postgres://orgkeeper@db:5432/app
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// The validated URL.
    pub fn url(&self) -> Result<String, ConfigError> {
        let url = required(
            &self.database_url,
            "DATABASE_URL",
            "database-url",
            "the PostgreSQL connection URL, e.g. postgres://user@127.0.0.1:5432/db",
        )?;
        postgres_url(url, "DATABASE_URL", "database-url")
    }
}

/// `url` when it is a PostgreSQL URL, else an error naming the setting.
fn postgres_url(url: String, env: &'static str, flag: &'static str) -> Result<String, ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError {
            env,
            flag,
            problem: "must start with postgres:// or postgresql://".into(),
        });
    }
    Ok(url)
}

/// The daemon's LISTEN connection, when `DATABASE_URL` is a pooler.
#[derive(Clone, Args)]
pub struct ListenDatabaseArgs {
    /// A direct PostgreSQL connection URL (not through a transaction-pooling
    /// PgBouncer) for LISTEN orgkeeper_actions; default: DATABASE_URL
    #[arg(long, env = "ORGKEEPER_LISTEN_DATABASE_URL", hide_env_values = true)]
    pub listen_database_url: Option<String>,
}

impl ListenDatabaseArgs {
    /// The validated URL, if one is set (an empty value counts as unset).
    pub fn url(&self) -> Result<Option<String>, ConfigError> {
        match self.listen_database_url.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) => postgres_url(
                url.to_string(),
                "ORGKEEPER_LISTEN_DATABASE_URL",
                "listen-database-url",
            )
            .map(Some),
        }
    }
}

/// Deployment settings that `orgkeeper migrate` records in the database
/// (table `orgkeeper.deployment_setting`), where triggers of application
/// transactions read them. Each is recorded only when its variable is set;
/// an unset variable leaves the stored value (or the default) alone.
///
/// To add one: a field here (flag + env), a line in [`Self::settings`], a
/// CHECK constraint for its values in a migration, and a reader in SQL
/// (`orgkeeper.get_deployment_setting(name, default)`).
#[derive(Clone, Debug, Default, Args)]
pub struct DeploymentSettingsArgs {
    /// Billing customers for team orgs: on = every new team organization gets a Stripe customer (stripe.create_customer); off = none. Unset = keep the recorded value (default off)
    #[arg(long, env = "ORGKEEPER_BILLING")]
    pub billing: Option<String>,
    /// Whether the org-creation policy also withholds personal organizations from users it does not allow: on | off. Unset = keep the recorded value (default off)
    #[arg(long, env = "ORGKEEPER_POLICY_PERSONAL_ORGS")]
    pub policy_personal_orgs: Option<String>,
    /// Owner emails allowed to create organizations, comma-separated (added to orgkeeper.org_creation_policy; entries are never removed by migrate)
    #[arg(long, env = "ORGKEEPER_ALLOWED_OWNER_EMAILS")]
    pub allowed_owner_emails: Option<String>,
    /// Email domains allowed to create organizations, comma-separated (added to orgkeeper.org_creation_policy; entries are never removed by migrate)
    #[arg(long, env = "ORGKEEPER_ALLOWED_DOMAINS")]
    pub allowed_domains: Option<String>,
}

/// One entry of the org-creation policy to seed at `orgkeeper migrate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySeed {
    /// `email` or `domain`.
    pub kind: &'static str,
    /// Trimmed and lower-cased.
    pub value: String,
    /// The environment variable (and flag) it came from, for `added_by`.
    pub env: &'static str,
}

/// Splits a comma-separated list: trimmed, lower-cased, empty items skipped.
fn comma_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|item| item.trim().to_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

fn on_off(value: &str, env: &'static str, flag: &'static str) -> Result<String, ConfigError> {
    let normalised = value.trim().to_ascii_lowercase();
    if normalised != "on" && normalised != "off" {
        return Err(ConfigError {
            env,
            flag,
            problem: format!("must be on or off, not {value:?}"),
        });
    }
    Ok(normalised)
}

/// The `litellm_base_url` deployment setting for `url` (validated, without a
/// trailing slash), as `env` gave it.
pub fn litellm_base_url_setting(
    url: &str,
    env: &'static str,
) -> Result<DeploymentSetting, ConfigError> {
    check_http_url(url.trim(), env, "litellm-base-url")?;
    Ok(DeploymentSetting {
        name: "litellm_base_url",
        value: url.trim().trim_end_matches('/').to_string(),
        env,
    })
}

/// One deployment setting to record: its name in `orgkeeper.deployment_setting`,
/// its value, and the environment variable it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentSetting {
    /// The setting's name in the table (e.g. `billing`).
    pub name: &'static str,
    /// Its validated value.
    pub value: String,
    /// The environment variable (and flag) it came from, for `set_by`.
    pub env: &'static str,
}

impl DeploymentSettingsArgs {
    /// The settings to record, validated (before anything touches the database).
    pub fn settings(&self) -> Result<Vec<DeploymentSetting>, ConfigError> {
        let mut out = Vec::new();
        if let Some(billing) = &self.billing {
            out.push(DeploymentSetting {
                name: "billing",
                value: on_off(billing, "ORGKEEPER_BILLING", "billing")?,
                env: "ORGKEEPER_BILLING",
            });
        }
        if let Some(personal) = &self.policy_personal_orgs {
            out.push(DeploymentSetting {
                name: "policy_applies_to_personal_orgs",
                value: on_off(
                    personal,
                    "ORGKEEPER_POLICY_PERSONAL_ORGS",
                    "policy-personal-orgs",
                )?,
                env: "ORGKEEPER_POLICY_PERSONAL_ORGS",
            });
        }
        Ok(out)
    }

    /// The org-creation policy entries to seed, validated: each email has one
    /// `@` with something on both sides, each domain none.
    pub fn policy_seed(&self) -> Result<Vec<PolicySeed>, ConfigError> {
        let mut out = Vec::new();
        if let Some(emails) = &self.allowed_owner_emails {
            for email in comma_list(emails) {
                let valid = match email.split_once('@') {
                    Some((local, domain)) => {
                        !local.is_empty()
                            && !domain.is_empty()
                            && !domain.contains('@')
                            && !email.contains(char::is_whitespace)
                    }
                    None => false,
                };
                if !valid {
                    return Err(ConfigError {
                        env: "ORGKEEPER_ALLOWED_OWNER_EMAILS",
                        flag: "allowed-owner-emails",
                        problem: format!("{email:?} is not an email address (name@domain)"),
                    });
                }
                out.push(PolicySeed {
                    kind: "email",
                    value: email,
                    env: "ORGKEEPER_ALLOWED_OWNER_EMAILS",
                });
            }
        }
        if let Some(domains) = &self.allowed_domains {
            for domain in comma_list(domains) {
                if domain.contains('@') || domain.contains(char::is_whitespace) {
                    return Err(ConfigError {
                        env: "ORGKEEPER_ALLOWED_DOMAINS",
                        flag: "allowed-domains",
                        problem: format!(
                            "{domain:?} is not an email domain (example.com, without @)"
                        ),
                    });
                }
                out.push(PolicySeed {
                    kind: "domain",
                    value: domain,
                    env: "ORGKEEPER_ALLOWED_DOMAINS",
                });
            }
        }
        Ok(out)
    }
}

/// `orgkeeper migrate`: the database, and the deployment settings to record.
/// (`Debug` shows the URL without its password.)
#[derive(Clone, Debug, Args)]
pub struct MigrateArgs {
    /// Where the database is.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// What to record in `orgkeeper.deployment_setting`.
    #[command(flatten)]
    pub settings: DeploymentSettingsArgs,
    /// The LiteLLM proxy's URL, recorded so user migration can tell a user's own provider (another base URL) from the proxy. Unset = keep the recorded value
    #[arg(long, env = "LITELLM_BASE_URL")]
    pub litellm_base_url: Option<String>,
}

/// How to reach the LiteLLM proxy, and what new organizations get there.
#[derive(Clone, Args)]
pub struct LiteLlmArgs {
    /// Base URL of the LiteLLM proxy's admin API, e.g. https://llm.example.com
    #[arg(long, env = "LITELLM_BASE_URL")]
    pub litellm_base_url: Option<String>,
    /// The proxy's master key (sk-…); never logged
    #[arg(long, env = "LITELLM_MASTER_KEY", hide_env_values = true)]
    pub litellm_master_key: Option<String>,
    /// Header carrying the master key: x-goog-api-key (as OpenHands does), Authorization (sent as Bearer), x-litellm-api-key, x-api-key or api-key
    #[arg(long, env = "LITELLM_AUTH_HEADER", default_value = "x-goog-api-key")]
    pub litellm_auth_header: String,
    /// Timeout of one LiteLLM call, in seconds
    #[arg(long, env = "LITELLM_TIMEOUT_SECS", default_value_t = 30)]
    pub litellm_timeout_secs: u64,
    /// Model path stored on new organizations; unset = litellm_proxy/<the current settings version's model> (table orgkeeper.settings_version)
    #[arg(long, env = "ORGKEEPER_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Restrict teams and keys to these models (comma-separated); unset = every model the proxy serves (models: [])
    #[arg(long, env = "ORGKEEPER_ALLOWED_MODELS", value_delimiter = ',')]
    pub allowed_models: Vec<String>,
    /// LLM base URL stored on new organizations (defaults to the LiteLLM base URL)
    #[arg(long, env = "ORGKEEPER_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// Budget of a new organization's team in USD; unset = unlimited (no max_budget sent)
    #[arg(long, env = "ORGKEEPER_TEAM_MAX_BUDGET")]
    pub team_max_budget: Option<f64>,
    /// Prefix of key aliases: "<prefix> - user <user_id> - org <org_id>"
    #[arg(
        long,
        env = "ORGKEEPER_KEY_ALIAS_PREFIX",
        default_value = "OpenHands Cloud"
    )]
    pub key_alias_prefix: String,
    /// The pre-organization application's shared LiteLLM team, if it had one: user migration moves a user's keys out of it (and rollback back into it)
    #[arg(long, env = "ORGKEEPER_LEGACY_TEAM_ID")]
    pub legacy_team_id: Option<String>,
}

/// Validated LiteLLM settings.
#[derive(Debug, Clone)]
pub struct LiteLlmSettings {
    /// The client's connection settings.
    pub client: crate::litellm::LiteLlmConfig,
    /// What new organizations get.
    pub provisioning: ProvisioningDefaults,
}

/// What a newly provisioned organization gets at LiteLLM and in its row.
#[derive(Debug, Clone)]
pub struct ProvisioningDefaults {
    /// Model stored on new orgs; `None` = the current settings version's model.
    pub model: Option<String>,
    /// Models teams and keys are restricted to; empty = all the proxy serves.
    pub allowed_models: Vec<String>,
    /// LLM base URL stored on the org.
    pub llm_base_url: String,
    /// Team budget; `None` = unlimited.
    pub team_max_budget: Option<f64>,
    /// Key alias prefix.
    pub key_alias_prefix: String,
    /// The legacy shared team whose keys user migration moves (besides keys in no team).
    pub legacy_team_id: Option<String>,
}

const AUTH_HEADERS: [&str; 5] = [
    "x-goog-api-key",
    "authorization",
    "x-litellm-api-key",
    "x-api-key",
    "api-key",
];

impl LiteLlmArgs {
    /// Validates the LiteLLM settings.
    pub fn settings(&self) -> Result<LiteLlmSettings, ConfigError> {
        let base_url = required(
            &self.litellm_base_url,
            "LITELLM_BASE_URL",
            "litellm-base-url",
            "the LiteLLM proxy's URL, e.g. http://127.0.0.1:4000",
        )?;
        check_http_url(&base_url, "LITELLM_BASE_URL", "litellm-base-url")?;
        let key = required(
            &self.litellm_master_key,
            "LITELLM_MASTER_KEY",
            "litellm-master-key",
            "the LiteLLM master key (sk-…)",
        )?;
        if !key.starts_with("sk-") {
            return Err(ConfigError {
                env: "LITELLM_MASTER_KEY",
                flag: "litellm-master-key",
                problem: "must start with sk- (LiteLLM keys do)".into(),
            });
        }
        if !AUTH_HEADERS.contains(&self.litellm_auth_header.to_ascii_lowercase().as_str()) {
            return Err(ConfigError {
                env: "LITELLM_AUTH_HEADER",
                flag: "litellm-auth-header",
                problem: format!("must be one of {}", AUTH_HEADERS.join(", ")),
            });
        }
        if let Some(budget) = self.team_max_budget {
            if !(budget.is_finite() && budget >= 0.0) {
                return Err(ConfigError {
                    env: "ORGKEEPER_TEAM_MAX_BUDGET",
                    flag: "team-max-budget",
                    problem: "must be a non-negative number of USD".into(),
                });
            }
        }
        let llm_base_url = self
            .llm_base_url
            .clone()
            .unwrap_or_else(|| base_url.clone());
        Ok(LiteLlmSettings {
            client: crate::litellm::LiteLlmConfig {
                base_url,
                master_key: SecretString::from(key),
                auth_header: self.litellm_auth_header.clone(),
                timeout: Duration::from_secs(self.litellm_timeout_secs.max(1)),
            },
            provisioning: ProvisioningDefaults {
                model: self
                    .default_model
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned),
                allowed_models: self
                    .allowed_models
                    .iter()
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect(),
                llm_base_url,
                team_max_budget: self.team_max_budget,
                key_alias_prefix: self.key_alias_prefix.clone(),
                legacy_team_id: self
                    .legacy_team_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            },
        })
    }
}

/// How to reach Stripe.
#[derive(Clone, Args)]
pub struct StripeArgs {
    /// Stripe API base URL
    #[arg(
        long,
        env = "STRIPE_BASE_URL",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_base_url: String,
    /// Stripe secret key (sk_…); without it, Stripe actions fail with a message saying to set it
    #[arg(long, env = "STRIPE_API_KEY", hide_env_values = true)]
    pub stripe_api_key: Option<String>,
}

impl StripeArgs {
    /// Validated Stripe settings; `None` when no key is configured.
    pub fn settings(&self) -> Result<Option<crate::stripe::StripeConfig>, ConfigError> {
        check_http_url(&self.stripe_base_url, "STRIPE_BASE_URL", "stripe-base-url")?;
        let Some(key) = &self.stripe_api_key else {
            return Ok(None);
        };
        if !(key.starts_with("sk_") || key.starts_with("rk_")) {
            return Err(ConfigError {
                env: "STRIPE_API_KEY",
                flag: "stripe-api-key",
                problem: "must be a Stripe secret or restricted key (sk_… or rk_…)".into(),
            });
        }
        Ok(Some(crate::stripe::StripeConfig {
            base_url: self.stripe_base_url.clone(),
            api_key: SecretString::from(key.clone()),
            timeout: Duration::from_secs(30),
        }))
    }
}

/// Encryption keys for secrets at rest.
#[derive(Clone, Args)]
pub struct SecretArgs {
    /// Current encryption key: 32 bytes, base64 (openssl rand -base64 32)
    #[arg(long, env = "ORGKEEPER_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Earlier keys still able to decrypt, comma-separated (key rotation)
    #[arg(
        long,
        env = "ORGKEEPER_OLD_SECRET_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub old_secret_keys: Vec<String>,
    /// The pre-organization application's (OpenHands') jwt_secret, whose Fernet key encrypted
    /// its users' secrets; needed to re-encrypt them on user migration
    #[arg(long, env = "ORGKEEPER_LEGACY_JWT_SECRET", hide_env_values = true)]
    pub legacy_jwt_secret: Option<String>,
}

impl SecretArgs {
    /// The validated keyring.
    pub fn keyring(&self) -> Result<crate::secrets::Keyring, ConfigError> {
        let current = required(
            &self.secret_key,
            "ORGKEEPER_SECRET_KEY",
            "secret-key",
            "32 random bytes, base64 (generate: openssl rand -base64 32)",
        )?;
        let old: Vec<SecretString> = self
            .old_secret_keys
            .iter()
            .map(|k| SecretString::from(k.clone()))
            .collect();
        if self.legacy_jwt_secret.as_deref() == Some("") {
            return Err(ConfigError {
                env: "ORGKEEPER_LEGACY_JWT_SECRET",
                flag: "legacy-jwt-secret",
                problem: "must not be empty (leave it unset when there is no legacy application)"
                    .into(),
            });
        }
        let legacy = self.legacy_jwt_secret.clone().map(SecretString::from);
        crate::secrets::Keyring::new(&SecretString::from(current), &old, legacy.as_ref()).map_err(
            |e| {
                let (env, flag) = match &e {
                    crate::secrets::SecretError::BadKey {
                        setting: "ORGKEEPER_OLD_SECRET_KEYS",
                    } => ("ORGKEEPER_OLD_SECRET_KEYS", "old-secret-keys"),
                    _ => ("ORGKEEPER_SECRET_KEY", "secret-key"),
                };
                ConfigError {
                    env,
                    flag,
                    problem:
                        "must be 32 bytes encoded as base64 (generate: openssl rand -base64 32)"
                            .into(),
                }
            },
        )
    }
}

/// How the daemon works through the outbox.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Actions performed at once by this replica
    #[arg(long, env = "ORGKEEPER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Lease on a claimed action, in seconds; another replica takes over an action whose lease expired
    #[arg(long, env = "ORGKEEPER_LEASE_SECS", default_value_t = 60.0)]
    pub lease_secs: f64,
    /// Safety-net poll interval in milliseconds (NOTIFY wakes the daemon sooner)
    #[arg(long, env = "ORGKEEPER_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// Attempts before an action is given up and compensated
    #[arg(long, env = "ORGKEEPER_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: i32,
    /// First retry delay in milliseconds; doubles per attempt, with jitter
    #[arg(long, env = "ORGKEEPER_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// Longest retry delay in seconds
    #[arg(long, env = "ORGKEEPER_RETRY_MAX_SECS", default_value_t = 300)]
    pub retry_max_secs: u64,
    /// Seconds to let in-flight actions finish on SIGTERM/SIGINT before releasing them
    #[arg(long, env = "ORGKEEPER_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Longest time one attempt of one action may take before it counts as a transient failure
    #[arg(long, env = "ORGKEEPER_ACTION_TIMEOUT_SECS", default_value_t = 300)]
    pub action_timeout_secs: u64,
    /// Name of this replica in leases and logs (default: host-pid)
    #[arg(long, env = "ORGKEEPER_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Address for /healthz and /metrics; "off" disables the endpoint
    #[arg(long, env = "ORGKEEPER_METRICS_ADDR", default_value = "127.0.0.1:9187")]
    pub metrics_addr: String,
}

/// Validated daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Actions performed at once.
    pub concurrency: usize,
    /// Lease length.
    pub lease: Duration,
    /// Poll interval.
    pub poll: Duration,
    /// Attempts before giving up.
    pub max_attempts: i32,
    /// Retry policy.
    pub retry: crate::outbox::RetryPolicy,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Time limit of one attempt.
    pub action_timeout: Duration,
    /// This replica's name.
    pub worker_id: String,
    /// Where /healthz and /metrics listen, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

impl DaemonArgs {
    /// Validates the daemon settings.
    pub fn settings(&self) -> Result<DaemonSettings, ConfigError> {
        let bad = |env, flag, problem: &str| ConfigError {
            env,
            flag,
            problem: problem.to_string(),
        };
        if !(1..=4096).contains(&self.concurrency) {
            return Err(bad(
                "ORGKEEPER_CONCURRENCY",
                "concurrency",
                "must be between 1 and 4096",
            ));
        }
        if !(self.lease_secs.is_finite() && self.lease_secs >= 0.5) {
            return Err(bad(
                "ORGKEEPER_LEASE_SECS",
                "lease-secs",
                "must be at least 0.5 seconds",
            ));
        }
        if self.poll_ms == 0 {
            return Err(bad(
                "ORGKEEPER_POLL_MS",
                "poll-ms",
                "must be at least 1 millisecond",
            ));
        }
        if self.retry_base_ms > self.retry_max_secs.saturating_mul(1000) {
            return Err(bad(
                "ORGKEEPER_RETRY_BASE_MS",
                "retry-base-ms",
                "must not exceed ORGKEEPER_RETRY_MAX_SECS",
            ));
        }
        if self.action_timeout_secs == 0 {
            return Err(bad(
                "ORGKEEPER_ACTION_TIMEOUT_SECS",
                "action-timeout-secs",
                "must be at least 1 second",
            ));
        }
        if self.max_attempts < 1 {
            return Err(bad(
                "ORGKEEPER_MAX_ATTEMPTS",
                "max-attempts",
                "must be at least 1",
            ));
        }
        let metrics_addr = match self.metrics_addr.as_str() {
            "off" | "" => None,
            addr => Some(addr.parse().map_err(|_| {
                bad(
                    "ORGKEEPER_METRICS_ADDR",
                    "metrics-addr",
                    "must be host:port (e.g. 127.0.0.1:9187) or off",
                )
            })?),
        };
        Ok(DaemonSettings {
            concurrency: self.concurrency,
            lease: Duration::from_secs_f64(self.lease_secs),
            poll: Duration::from_millis(self.poll_ms),
            max_attempts: self.max_attempts,
            retry: crate::outbox::RetryPolicy {
                base: Duration::from_millis(self.retry_base_ms.max(1)),
                max: Duration::from_secs(self.retry_max_secs.max(1)),
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            action_timeout: Duration::from_secs(self.action_timeout_secs),
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            metrics_addr,
        })
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

fn check_http_url(url: &str, env: &'static str, flag: &'static str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        _ => Err(ConfigError {
            env,
            flag,
            // Only the scheme is echoed: a URL may carry credentials.
            problem: format!(
                "must be an http(s) URL (got {})",
                url.split_once("://")
                    .map_or("no scheme", |(scheme, _)| scheme)
            ),
        }),
    }
}

// Debug output of settings never shows a key or a password (it may end up in logs).

impl fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field(
                "database_url",
                &self.database_url.as_deref().map(crate::db::redact_url),
            )
            .finish()
    }
}

impl fmt::Debug for ListenDatabaseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenDatabaseArgs")
            .field(
                "listen_database_url",
                &self
                    .listen_database_url
                    .as_deref()
                    .map(crate::db::redact_url),
            )
            .finish()
    }
}

impl fmt::Debug for LiteLlmArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiteLlmArgs")
            .field("litellm_base_url", &self.litellm_base_url)
            .field("litellm_master_key_set", &self.litellm_master_key.is_some())
            .field("litellm_auth_header", &self.litellm_auth_header)
            .field("default_model", &self.default_model)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for StripeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeArgs")
            .field("stripe_base_url", &self.stripe_base_url)
            .field("stripe_api_key_set", &self.stripe_api_key.is_some())
            .finish()
    }
}

impl fmt::Debug for SecretArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretArgs")
            .field("secret_key_set", &self.secret_key.is_some())
            .field("old_secret_keys", &self.old_secret_keys.len())
            .field("legacy_jwt_secret_set", &self.legacy_jwt_secret.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct All {
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
    }

    #[derive(Debug, Parser)]
    struct Deployment {
        #[command(flatten)]
        settings: DeploymentSettingsArgs,
    }

    #[test]
    fn the_policy_seed_is_trimmed_lower_cased_and_validated() {
        let args = Deployment::parse_from([
            "x",
            "--allowed-owner-emails",
            " Boss@Else.test ,, ",
            "--allowed-domains",
            "Example.COM, ,example.org",
            "--policy-personal-orgs",
            " ON ",
        ]);
        let seed = args.settings.policy_seed().unwrap();
        let values: Vec<(&str, &str)> = seed.iter().map(|s| (s.kind, s.value.as_str())).collect();
        assert_eq!(
            values,
            [
                ("email", "boss@else.test"),
                ("domain", "example.com"),
                ("domain", "example.org")
            ]
        );
        let settings = args.settings.settings().unwrap();
        assert_eq!(settings[0].name, "policy_applies_to_personal_orgs");
        assert_eq!(settings[0].value, "on");

        for (flag, value, env) in [
            (
                "--allowed-owner-emails",
                "boss",
                "ORGKEEPER_ALLOWED_OWNER_EMAILS",
            ),
            (
                "--allowed-owner-emails",
                "@else.test",
                "ORGKEEPER_ALLOWED_OWNER_EMAILS",
            ),
            (
                "--allowed-domains",
                "a@example.com",
                "ORGKEEPER_ALLOWED_DOMAINS",
            ),
        ] {
            let args = Deployment::parse_from(["x", flag, value]);
            assert_eq!(args.settings.policy_seed().unwrap_err().env, env, "{value}");
        }
        let args = Deployment::parse_from(["x", "--policy-personal-orgs", "yes"]);
        assert_eq!(
            args.settings.settings().unwrap_err().env,
            "ORGKEEPER_POLICY_PERSONAL_ORGS"
        );
    }

    #[test]
    fn the_listen_url_is_optional_and_validated_like_database_url() {
        #[derive(Debug, Parser)]
        struct Listen {
            #[command(flatten)]
            listen: ListenDatabaseArgs,
        }
        let unset = Listen::parse_from(["x"]);
        assert_eq!(unset.listen.url().unwrap(), None);
        let empty = Listen::parse_from(["x", "--listen-database-url", " "]);
        assert_eq!(empty.listen.url().unwrap(), None);
        let direct = Listen::parse_from(["x", "--listen-database-url", "postgres://db:5432/app"]);
        assert_eq!(
            direct.listen.url().unwrap().as_deref(),
            Some("postgres://db:5432/app")
        );
        let bad = Listen::parse_from(["x", "--listen-database-url", "mysql://db/app"]);
        let err = bad.listen.url().unwrap_err();
        assert_eq!(err.env, "ORGKEEPER_LISTEN_DATABASE_URL");
        assert!(err.to_string().contains("postgres://"), "{err}");
    }

    #[test]
    fn debug_output_of_settings_shows_no_secret() {
        let all = All::parse_from([
            "x",
            "--database-url",
            "postgres://app:hunter2@db/app",
            "--listen-database-url",
            "postgres://app:hunter3@db-direct/app",
            "--litellm-master-key",
            "sk-master-secret-1",
            "--stripe-api-key",
            "sk_live_secret_2",
            "--secret-key",
            "c2VjcmV0LWtleS1tYXRlcmlhbA==",
            "--legacy-jwt-secret",
            "openhands-jwt-secret-value",
        ]);
        let shown = format!("{all:?}");
        for secret in [
            "hunter2",
            "hunter3",
            "sk-master-secret-1",
            "sk_live_secret_2",
            "c2VjcmV0",
            "openhands-jwt",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}

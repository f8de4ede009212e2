//! The command line: parses arguments and dispatches, nothing else.

use crate::config::{ConfigError, DatabaseArgs, MigrateArgs};
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// orgkeeper onboards organizations: PostgreSQL keeps the truth and the
/// invariants, a daemon performs the external side effects (LiteLLM,
/// Stripe) from an outbox table.
///
/// Every setting can also be given as the environment variable named in its
/// help (`[env: …]`); options that only say what one run does are flags only.
/// A malformed value stops the command with one line naming both, exit 2.
#[derive(Debug, Parser)]
#[command(name = "orgkeeper", version, about, long_about)]
pub struct Cli {
    /// Log format
    #[arg(long, env = "ORGKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the versioned migrations and the SQL function library (safe to run twice, or from two places at once), then record the deployment settings given (ORGKEEPER_BILLING, ORGKEEPER_POLICY_PERSONAL_ORGS, LITELLM_BASE_URL) and seed the org-creation policy (ORGKEEPER_ALLOWED_OWNER_EMAILS, ORGKEEPER_ALLOWED_DOMAINS)
    Migrate(MigrateArgs),
    /// Run the daemon: perform outbox actions against LiteLLM and Stripe until SIGTERM/SIGINT
    Listen(Box<crate::commands::listen::ListenArgs>),
    /// Move pre-organization users into personal organizations, verify, roll back
    Users {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: crate::commands::users::UsersCommand,
    },
    /// Manage organizations as a user would: create, rename, delete, transfer, members, invitations
    Org {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: crate::commands::org::OrgCommand,
    },
    /// Who may create organizations: allowed owner emails and email domains (empty = everyone)
    Policy {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: crate::commands::policy::PolicyCommand,
    },
    /// Inspect, retry or cancel outbox actions
    Actions {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: crate::commands::actions::ActionsCommand,
    },
    /// Members' LiteLLM keys: check that they work, replace them
    Keys {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: crate::commands::keys::KeysCommand,
    },
    /// Secrets at rest: re-encrypt them under the current key
    Secrets {
        #[command(subcommand)]
        command: crate::commands::secrets::SecretsCommand,
    },
    /// Everything on this machine with no configuration: a private PostgreSQL, the simulators and the daemon
    #[cfg(feature = "dev-tools")]
    Dev(crate::commands::dev::DevArgs),
    /// Run a benchmark and print its figures
    #[cfg(feature = "dev-tools")]
    Bench {
        #[command(subcommand)]
        command: crate::commands::bench::BenchCommand,
    },
    /// Run a LiteLLM or Stripe simulator as a standalone server
    #[cfg(feature = "dev-tools")]
    Simulate {
        #[command(subcommand)]
        service: Simulated,
    },
}

#[cfg(feature = "dev-tools")]
#[derive(Debug, Subcommand)]
enum Simulated {
    /// The LiteLLM admin API (in memory)
    Litellm(crate::litellm::SimulatorArgs),
    /// The Stripe customers API (in memory)
    Stripe(crate::stripe::SimulatorArgs),
}

/// Parses the command line, runs the command, and maps failures to exit
/// codes: 2 for a missing or malformed setting, 1 for other failures.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return parse_error(err),
    };
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config) => {
                eprintln!("error: {config}");
                ExitCode::from(2)
            }
            None => {
                eprintln!(
                    "error: {}",
                    crate::redact::redact_secrets(&format!("{e:#}"))
                );
                ExitCode::from(1)
            }
        },
    }
}

/// clap's own report, except for a value it could not parse: that becomes
/// one line naming the environment variable (if the flag has one) and the
/// flag, like every other malformed setting, and exit status 2.
fn parse_error(err: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        err.exit()
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        err.get(ContextKind::InvalidArg),
        err.get(ContextKind::InvalidValue),
    ) else {
        err.exit()
    };
    let Some(flag) = arg
        .split_whitespace()
        .next()
        .and_then(|a| a.strip_prefix("--"))
    else {
        err.exit()
    };
    let (path, env) = flag_env(flag);
    let named = match env {
        Some((env, true)) => format!("{env} (--{flag}): the value given"),
        Some((env, false)) => format!("{env} (--{flag}): {value:?}"),
        None => format!("--{flag}: {value:?}"),
    };
    let why = match (
        std::error::Error::source(&err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => "not a valid value".to_string(),
    };
    eprintln!("error: {named} is not valid: {why}; `{path} --help` describes it");
    ExitCode::from(2)
}

/// The command line's subcommand path (e.g. `orgkeeper users migrate`), and
/// the environment variable of its flag `--long` (searched from the
/// innermost subcommand out) with whether its values are hidden.
fn flag_env(long: &str) -> (String, Option<(String, bool)>) {
    use clap::CommandFactory;
    let mut chain = vec![Cli::command()];
    for word in std::env::args().skip(1) {
        let sub = chain.last().and_then(|c| c.find_subcommand(&word)).cloned();
        if let Some(sub) = sub {
            chain.push(sub);
        }
    }
    let path = chain
        .iter()
        .map(|c| c.get_name().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let env = chain.iter().rev().find_map(|cmd| {
        cmd.get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .map(|arg| {
                arg.get_env().map(|env| {
                    (
                        env.to_string_lossy().into_owned(),
                        arg.is_hide_env_values_set(),
                    )
                })
            })
    });
    (path, env.flatten())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate(args) => {
            // Every setting is validated before the database is touched.
            let url = args.database.url()?;
            let mut settings = args.settings.settings()?;
            if let Some(litellm) = &args.litellm_base_url {
                settings.push(crate::config::litellm_base_url_setting(
                    litellm,
                    "LITELLM_BASE_URL",
                )?);
            }
            let seed = args.settings.policy_seed()?;
            let report = crate::db::migrate(&url).await?;
            if report.applied.is_empty() {
                println!("migrations: up to date");
            } else {
                println!("migrations applied: {}", report.applied.join(", "));
            }
            println!(
                "function library: {}",
                if report.library_applied {
                    "applied"
                } else {
                    "unchanged"
                }
            );
            for applied in crate::db::apply_deployment_settings(&url, &settings).await? {
                println!(
                    "deployment setting {} = {} ({})",
                    applied.name,
                    applied.value,
                    if applied.changed {
                        "recorded"
                    } else {
                        "unchanged"
                    }
                );
            }
            for (entry, added) in crate::db::apply_policy_seed(&url, &seed).await? {
                println!(
                    "org-creation policy: {} {} ({})",
                    entry.kind,
                    entry.value,
                    if added { "added" } else { "already allowed" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Listen(args) => {
            let config = args.validate()?;
            if args.check {
                if let Some(url) = &config.listen_database_url {
                    crate::commands::listen::check_listen(url).await?;
                }
                let (services, settings) = crate::commands::listen::services(config).await?;
                println!(
                    "configuration ok: database reachable and migrated; worker {}, concurrency {}, secret key id {}",
                    settings.worker_id,
                    settings.concurrency,
                    services.keyring.current_key_id()
                );
                return Ok(ExitCode::SUCCESS);
            }
            crate::commands::listen::run(config, crate::commands::listen::shutdown_on_signals())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Users { database, command } => {
            let pool = crate::db::connect(&database.url()?, 2).await?;
            crate::commands::users::run(&pool, command).await
        }
        Command::Org { database, command } => {
            let pool = crate::db::connect(&database.url()?, 2).await?;
            crate::commands::org::run(&pool, command).await
        }
        Command::Policy { database, command } => {
            let pool = crate::db::connect(&database.url()?, 1).await?;
            crate::commands::policy::run(&pool, command).await
        }
        Command::Actions { database, command } => {
            let pool = crate::db::connect(&database.url()?, 2).await?;
            crate::commands::actions::run(&pool, command).await
        }
        Command::Keys { database, command } => {
            let pool = crate::db::connect(&database.url()?, 2).await?;
            crate::commands::keys::run(&pool, command).await
        }
        Command::Secrets { command } => crate::commands::secrets::run(command).await,
        #[cfg(feature = "dev-tools")]
        Command::Dev(args) => {
            crate::commands::dev::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev-tools")]
        Command::Bench { command } => {
            crate::commands::bench::run(command).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev-tools")]
        Command::Simulate { service } => {
            match service {
                Simulated::Litellm(args) => crate::litellm::serve_forever(args).await?,
                Simulated::Stripe(args) => crate::stripe::serve_forever(args).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

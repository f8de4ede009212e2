//! The command line: parses arguments and dispatches, nothing else.

use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

/// orgkeeper onboards organizations: PostgreSQL keeps the truth, a daemon
/// performs the external side effects (LiteLLM, Stripe) from an outbox.
#[derive(Debug, Parser)]
#[command(name = "orgkeeper", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the versioned migrations and the SQL function library (safe to run twice, or from two places at once).
    Migrate(DatabaseArgs),
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, e.g. postgres://user@host:5432/db
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Parses the command line, runs the command, and maps failures to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Migrate(db) => {
            let report = crate::db::migrate(&db.database_url).await?;
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
            Ok(ExitCode::SUCCESS)
        }
    }
}

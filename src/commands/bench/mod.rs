//! `orgkeeper bench …`: benchmarks that print figures (and, with `--json`,
//! end with one JSON object of them). They are measurements, not tests.

mod env;
mod migrate;
mod provision;

use clap::Subcommand;

pub use env::BenchEnv;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Insert organizations and measure provisioning throughput, latency, memory and stability
    Provision(provision::ProvisionArgs),
    /// Generate legacy users and measure user migration throughput, database and external side
    Migrate(migrate::MigrateArgs),
}

/// Runs a benchmark.
pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Provision(args) => provision::run(args).await,
        BenchCommand::Migrate(args) => migrate::run(args).await,
    }
}

/// The `p`-th percentile (0..=100) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

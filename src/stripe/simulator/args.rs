//! The simulator's command line (`orgkeeper simulate stripe`).

use super::server::mask_key;
use super::{Faults, DEFAULT_API_KEY, DEFAULT_PORT};
use crate::simkit::{self, FaultFlags};
use crate::stripe::Call;
use std::fmt;

/// Command-line settings of the simulator (`orgkeeper simulate stripe`).
/// `Debug` masks the API key.
#[derive(Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Port to listen on at 127.0.0.1 (0 picks any free port).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The secret key clients must send (`Authorization: Bearer <key>`).
    #[arg(long, env = "STRIPE_API_KEY", default_value = DEFAULT_API_KEY, hide_env_values = true)]
    pub api_key: String,
    /// Injected faults.
    #[command(flatten)]
    pub fault_flags: FaultFlags,
    /// Always answer ENDPOINT with STATUS without acting, e.g. `update_customer=429`
    /// (endpoints: create_customer, update_customer, get_customer, list_customers,
    /// search_customers, delete_customer, or `*`). Repeatable.
    #[arg(long = "fail", value_name = "ENDPOINT=STATUS", value_parser = parse_fail)]
    pub fail: Vec<(String, u16)>,
}

impl fmt::Debug for SimulatorArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatorArgs")
            .field("port", &self.port)
            .field("api_key", &mask_key(&self.api_key))
            .field("fault_flags", &self.fault_flags)
            .field("fail", &self.fail)
            .finish()
    }
}

impl SimulatorArgs {
    /// Settings for an in-process simulator: any free port, the default key, no faults.
    pub fn local() -> Self {
        SimulatorArgs {
            port: 0,
            api_key: DEFAULT_API_KEY.to_string(),
            fault_flags: FaultFlags::default(),
            fail: Vec::new(),
        }
    }

    /// The fault-injection part of these settings.
    pub fn faults(&self) -> Faults {
        self.fault_flags.faults(&self.fail)
    }
}

/// Parses `ENDPOINT=STATUS` for `--fail`: a [`Call`]'s name, or `*` for every endpoint.
fn parse_fail(s: &str) -> Result<(String, u16), String> {
    let known: Vec<&str> = Call::ALL.iter().map(|c| c.as_str()).collect();
    simkit::parse_fail(s, &known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_fail("update_customer=429"),
            Ok(("update_customer".into(), 429))
        );
        assert_eq!(parse_fail("*=503"), Ok(("*".into(), 503)));
        assert!(parse_fail("update=429").is_err());
        assert!(parse_fail("get_customer=200").is_err());
    }
}

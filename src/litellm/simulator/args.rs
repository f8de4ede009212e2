//! The simulator's command line (`orgkeeper simulate litellm`).

use super::{Faults, DEFAULT_MASTER_KEY, DEFAULT_MODELS};
use crate::litellm::Call;
use crate::simkit::{self, FaultFlags};
use secrecy::SecretString;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Command-line settings of the simulator (`orgkeeper simulate litellm`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// TCP port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 4000)]
    pub port: u16,
    /// The master key clients must present.
    #[arg(
        long,
        env = "LITELLM_MASTER_KEY",
        hide_env_values = true,
        default_value = DEFAULT_MASTER_KEY,
        value_parser = parse_secret
    )]
    pub master_key: SecretString,
    /// Injected faults.
    #[command(flatten)]
    pub fault_flags: FaultFlags,
    /// `ENDPOINT=STATUS`, e.g. `key/generate=400`: that endpoint (or `*`,
    /// every endpoint) always fails with that status, without acting. Repeatable.
    #[arg(long = "fail", value_name = "ENDPOINT=STATUS", value_parser = parse_fail)]
    pub fail: Vec<(String, u16)>,
    /// Answer every request with `307 Temporary Redirect` to this base URL
    /// (`Location: <URL><the request's path and query>`), without acting.
    #[arg(long, value_name = "URL", value_parser = parse_redirect)]
    pub redirect_to: Option<String>,
    /// The models the proxy serves, as `GET /v1/models` lists them
    /// (comma-separated or repeated).
    #[arg(
        long,
        value_name = "MODEL",
        value_delimiter = ',',
        default_values_t = DEFAULT_MODELS.map(String::from)
    )]
    pub models: Vec<String>,
}

impl Default for SimulatorArgs {
    /// The command line's defaults: port 4000, the development master key, no faults.
    fn default() -> Self {
        Self {
            port: 4000,
            master_key: SecretString::from(DEFAULT_MASTER_KEY),
            fault_flags: FaultFlags::default(),
            fail: Vec::new(),
            redirect_to: None,
            models: DEFAULT_MODELS.map(String::from).to_vec(),
        }
    }
}

impl SimulatorArgs {
    /// The faults these arguments ask for.
    pub fn faults(&self) -> Faults {
        self.fault_flags.faults(&self.fail)
    }
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        return Err("the master key must not be empty".into());
    }
    Ok(SecretString::from(s.trim()))
}

/// Parses `--redirect-to`: an `http://` or `https://` URL without a query,
/// returned without a trailing `/`.
pub fn parse_redirect(s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = reqwest::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s:?} must not have a query or fragment (the request's own path and query are appended)"
        ));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Parses `ENDPOINT=STATUS` (`key/generate=400`, or `*=503` for every
/// endpoint; a leading `/` is allowed).
pub fn parse_fail(s: &str) -> Result<(String, u16), String> {
    let known: Vec<&str> = Call::ALL.iter().map(|c| c.as_str()).collect();
    simkit::parse_fail(s.trim_start().trim_start_matches('/'), &known)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn flags_parse() {
        assert_eq!(
            parse_fail("/key/generate=400").unwrap(),
            ("key/generate".into(), 400)
        );
        assert_eq!(parse_fail("*=503").unwrap(), ("*".into(), 503));
        assert!(parse_fail("key/nope=400").is_err());
        assert!(parse_fail("key/generate=200").is_err());
    }

    #[test]
    fn the_command_line_parses_every_fault_flag() {
        use clap::{CommandFactory, Parser};
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: SimulatorArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "sim",
            "--port",
            "0",
            "--master-key",
            "sk-custom-master-key-1",
            "--error-rate",
            "0.25",
            "--latency-ms",
            "5..40",
            "--perform-then-502",
            "--drop-rate",
            "0.1",
            "--fail",
            "key/generate=400",
            "--fail",
            "/team/new=503",
            "--fail",
            "key/delete=500",
            "--redirect-to",
            "http://127.0.0.1:9/",
            "--models",
            "model-a,model-b",
            "--models",
            "model-c",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!(a.port, 0);
        assert_eq!(a.master_key.expose_secret(), "sk-custom-master-key-1");
        assert!(!format!("{a:?}").contains("custom-master"));
        let f = a.faults();
        assert_eq!(
            (f.error_rate, f.latency_ms, f.drop_rate),
            (0.25, (5, 40), 0.1)
        );
        assert!(f.perform_then_502);
        assert_eq!(
            f.fail,
            vec![
                ("key/generate".to_string(), 400),
                ("team/new".to_string(), 503),
                ("key/delete".to_string(), 500),
            ]
        );
        assert_eq!(a.redirect_to.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(a.models, ["model-a", "model-b", "model-c"]);
        assert!(Cli::try_parse_from(["sim", "--redirect-to", "ftp://x"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--redirect-to", "http://x/?a=1"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--redirect-to", "not a url"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--error-rate", "2"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--fail", "nope"]).is_err());
        let d = Cli::try_parse_from(["sim"]).unwrap().args;
        assert_eq!(
            (d.port, d.fault_flags.latency_ms, d.fail.len()),
            (4000, (0, 0), 0)
        );
        assert_eq!(
            (d.redirect_to, d.models),
            (None, vec![DEFAULT_MODELS[0].to_string()])
        );
        let def = SimulatorArgs::default();
        assert_eq!(
            (def.redirect_to, def.models),
            (None, vec![DEFAULT_MODELS[0].to_string()])
        );
    }
}

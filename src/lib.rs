//! orgkeeper: PostgreSQL holds the organizations and their invariants; this
//! crate applies the schema, runs the daemon that performs the outbox's
//! external actions (LiteLLM, Stripe), and offers the operator commands.

#[cfg(feature = "dev-tools")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
#[cfg(feature = "dev-tools")]
pub mod dev;
pub mod keys;
#[cfg(feature = "dev-tools")]
pub mod legacy_data;
pub mod legacy_secrets;
pub mod listen;
pub mod litellm;
pub mod live_checks;
pub mod operator;
pub mod ops;
pub mod orgs;
pub mod outbox;
#[cfg(feature = "dev-tools")]
pub mod pgcluster;
pub mod policy;
pub mod redact;
pub mod secrets;
pub mod secrets_rotate;
#[cfg(feature = "dev-tools")]
pub mod simkit;
pub mod stripe;
pub mod users;

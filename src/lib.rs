//! orgkeeper: PostgreSQL holds the organizations and their invariants; this
//! crate applies the schema, runs the daemon that performs the outbox's
//! external actions (LiteLLM, Stripe), and offers the operator commands.

pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
#[cfg(feature = "dev-tools")]
pub mod legacy_data;
pub mod legacy_secrets;
pub mod litellm;
pub mod monitoring;
pub mod names;
pub mod outbox;
#[cfg(feature = "dev-tools")]
pub mod pgcluster;
pub mod redact;
pub mod secrets;
#[cfg(feature = "dev-tools")]
pub mod simkit;
pub mod stripe;

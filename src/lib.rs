//! orgkeeper: PostgreSQL holds the organizations and their invariants; this
//! crate applies the schema, runs the daemon that performs the outbox's
//! external actions (LiteLLM, Stripe), and offers the operator commands.

pub mod cli;
pub mod db;
pub mod litellm;
pub mod operator;
pub mod ops;
pub mod pgcluster;
pub mod redact;
pub mod secrets;
pub mod stripe;

//! One module per `orgkeeper` subcommand, named after it: what the command
//! reads, what it calls and what it prints. `src/cli.rs` parses the command
//! line and dispatches here.

pub mod actions;
#[cfg(feature = "dev-tools")]
pub mod bench;
#[cfg(feature = "dev-tools")]
pub mod dev;
pub mod keys;
pub mod listen;
pub mod org;
pub mod policy;
pub mod secrets;
pub mod users;

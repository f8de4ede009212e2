//! Stripe: the client the daemon uses to tag and create billing customers,
//! and an in-memory simulator (with fault injection) for tests and
//! `orgkeeper dev`.
//!
//! The client knows HTTP, not the database: it classifies every failure as
//! [`StripeError::Transient`] (retry later with the same idempotency key) or
//! [`StripeError::Permanent`], and leaves retry policy to the outbox.

mod call;
pub mod client;
#[cfg(feature = "dev-tools")]
pub mod simulator;

#[cfg(feature = "dev-tools")]
pub use crate::simkit::Faults;
pub use call::Call;
pub use client::{Customer, SearchResult, StripeClient, StripeConfig, StripeError};
#[cfg(feature = "dev-tools")]
pub use simulator::{serve_forever, SimStats, SimulatorArgs, StripeSimulator};

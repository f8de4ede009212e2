//! The outbox: claiming actions, recording their outcomes (fenced on the
//! lease), the retry policy, and the listen/poll loop that drives it all.

mod batch;
pub mod handlers;
mod kind;
mod retry;
mod store;
mod worker;

pub use batch::BatchWrite;
pub use kind::{ActionKind, ActionStatus, Outcome};
pub use retry::RetryPolicy;
pub use store::{write_outcomes, Action, Fence, Outbox, OutcomesQuery};
pub use worker::{Daemon, Shutdown};

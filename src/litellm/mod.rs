//! LiteLLM: the admin-API client the daemon uses ([`LiteLlmClient`]), and an
//! in-memory simulator of the proxy's admin API ([`simulator`]) for tests,
//! `orgkeeper dev` and `orgkeeper simulate litellm`. Both follow
//! `shared/spec/litellm.md`, quirks included.

mod call;
mod client;
#[cfg(feature = "dev-tools")]
pub mod simulator;

#[cfg(feature = "dev-tools")]
pub use crate::simkit::Faults;
pub use call::Call;
pub use client::{
    hash_key, Created, Deleted, ListedKey, LiteLlmClient, LiteLlmConfig, LiteLlmError,
    MemberBudget, NewKey, NewTeam, NewUser, TeamInfo, TeamOwner, UserInfo, DEFAULT_AUTH_HEADER,
    UNLIMITED_MAX_BUDGET,
};
#[cfg(feature = "dev-tools")]
pub use simulator::{serve_forever, LiteLlmSimulator, SimStats, SimulatorArgs, DEFAULT_MASTER_KEY};

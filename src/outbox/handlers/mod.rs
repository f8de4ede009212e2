//! The action handlers: one module per action kind (or pair of kinds), each
//! implementing [`Handler`], and the registry [`handler`] that maps an
//! [`ActionKind`] to its handler. A new external action is a new kind, a
//! new module implementing [`Handler`] (its `compensate` if it has
//! something to undo) and one line in [`handler`].
//!
//! Handlers talk to the outside world through the clients in `litellm` and
//! `stripe`, and to the database only through SQL functions.

/// Declares a handler with nothing to undo: a unit struct whose
/// [`Handler::perform`] is `$perform` over `services`, `outbox` and `action`
/// (named by the caller, `_`-prefixed when unused).
macro_rules! perform_only_handler {
    ($(#[$meta:meta])* $name:ident, |$services:ident, $outbox:ident, $action:ident| $perform:expr) => {
        $(#[$meta])*
        pub(super) struct $name;

        impl $crate::outbox::handlers::Handler for $name {
            fn perform<'a>(
                &'a self,
                $services: &'a $crate::outbox::handlers::Services,
                $outbox: &'a $crate::outbox::Outbox,
                $action: &'a $crate::outbox::Action,
            ) -> $crate::outbox::handlers::Performing<'a> {
                Box::pin($perform)
            }
        }
    };
}
mod create_customer;
mod delete_team;
mod deprovision_org;
mod keys;
mod members;
mod migrate_user;
mod provision_org;
mod reencrypt;
mod rotate_key;
mod set_budget;
mod stripe_customer;
mod verify_key;

use crate::config::ProvisioningDefaults;
use crate::litellm::{LiteLlmClient, LiteLlmError};
use crate::monitoring::metrics::ExternalCall;
use crate::monitoring::Metrics;
use crate::outbox::{Action, ActionKind, ActionStatus, Outbox, Outcome};
use crate::secrets::{Keyring, SecretError};
use crate::stripe::{StripeClient, StripeError};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What handlers share: the database, the clients, the keys, the defaults.
pub struct Services {
    /// The database.
    pub pool: PgPool,
    /// The LiteLLM admin API.
    pub litellm: LiteLlmClient,
    /// Stripe, when configured.
    pub stripe: Option<StripeClient>,
    /// Keys for secrets at rest.
    pub keyring: Keyring,
    /// What new organizations get.
    pub defaults: ProvisioningDefaults,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
}

/// How a handler finished successfully.
#[derive(Debug)]
pub enum Finish {
    /// The worker marks the action done with this result.
    Result(Value),
    /// The handler's own write-back already marked it done (same transaction).
    Recorded,
}

/// Why a handler did not finish.
#[derive(Debug)]
pub enum ActionError {
    /// Retrying may help (network, 5xx, 429, database unavailable).
    Transient(String),
    /// Retrying cannot help; compensate.
    Permanent(String),
    /// Another replica took the action over; stop without writing.
    LeaseLost,
}

impl From<LiteLlmError> for ActionError {
    fn from(e: LiteLlmError) -> Self {
        classify(e.is_transient(), e.to_string())
    }
}

impl From<StripeError> for ActionError {
    fn from(e: StripeError) -> Self {
        classify(e.is_transient(), e.to_string())
    }
}

impl From<sqlx::Error> for ActionError {
    fn from(e: sqlx::Error) -> Self {
        ActionError::Transient(format!("database: {e}"))
    }
}

impl From<SecretError> for ActionError {
    fn from(e: SecretError) -> Self {
        ActionError::Permanent(format!("secrets: {e}"))
    }
}

fn classify(transient: bool, message: String) -> ActionError {
    let message = crate::redact::redact_secrets(&message);
    if transient {
        ActionError::Transient(message)
    } else {
        ActionError::Permanent(message)
    }
}

/// Errors of external clients that know whether retrying may help.
pub trait ExternalError: std::fmt::Display + Into<ActionError> {
    /// Whether retrying the same call may succeed.
    fn is_transient(&self) -> bool;
}

impl ExternalError for LiteLlmError {
    fn is_transient(&self) -> bool {
        LiteLlmError::is_transient(self)
    }
}

impl ExternalError for StripeError {
    fn is_transient(&self) -> bool {
        StripeError::is_transient(self)
    }
}

/// Delays between quick in-place retries of one external call; the outbox's
/// backoff takes over after these.
const CALL_RETRIES: [Duration; 2] = [Duration::from_millis(25), Duration::from_millis(150)];

/// Performs one external call, timing it, and retrying it in place a couple
/// of times when the failure is transient (every call is idempotent).
pub(crate) async fn call<C, T, E, Fut>(
    services: &Services,
    call: C,
    mut f: impl FnMut() -> Fut,
) -> Result<T, ActionError>
where
    C: ExternalCall,
    E: ExternalError,
    Fut: Future<Output = Result<T, E>>,
{
    let (service, name) = (C::SERVICE, call.into());
    let mut retries = CALL_RETRIES.iter();
    loop {
        let started = Instant::now();
        let result = f().await;
        services.metrics.call_latency(call, started.elapsed());
        match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => match retries.next() {
                Some(delay) => {
                    tracing::debug!(service, call = name, error = %e, "transient failure; retrying in place");
                    tokio::time::sleep(*delay).await;
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// A handler's forward work in progress.
pub type Performing<'a> = BoxFuture<'a, Result<Finish, ActionError>>;

/// A handler's compensation in progress; it ends with the attempt's outcome.
pub type Compensating<'a> = BoxFuture<'a, sqlx::Result<Outcome>>;

/// What the daemon does with one kind of action. The futures are boxed so
/// that [`handler`] can hand out every kind's handler as the same type.
pub trait Handler: Sync {
    /// Performs the action's forward work.
    fn perform<'a>(
        &'a self,
        services: &'a Services,
        outbox: &'a Outbox,
        action: &'a Action,
    ) -> Performing<'a>;

    /// Undoes what the action may have done after the permanent failure
    /// `error`, and ends it as `compensated` or `failed`, or schedules the
    /// cleanup again when it failed transiently and `may_retry`. By default
    /// there is nothing to undo: the action ends `failed`.
    fn compensate<'a>(
        &'a self,
        _services: &'a Services,
        outbox: &'a Outbox,
        action: &'a Action,
        _error: &'a str,
        _may_retry: bool,
    ) -> Compensating<'a> {
        Box::pin(nothing_to_undo(outbox, action))
    }
}

/// The handler of each action kind.
pub fn handler(kind: ActionKind) -> &'static dyn Handler {
    match kind {
        ActionKind::ProvisionOrg => &provision_org::ProvisionOrg,
        ActionKind::DeleteTeam => &delete_team::DeleteTeam,
        ActionKind::DeprovisionOrg => &deprovision_org::DeprovisionOrg,
        ActionKind::AddMember => &members::AddMember,
        ActionKind::RemoveMember => &members::RemoveMember,
        ActionKind::RotateKey => &rotate_key::RotateKey,
        ActionKind::VerifyKey => &verify_key::VerifyKey,
        ActionKind::SetBudget => &set_budget::SetBudget,
        ActionKind::MigrateUser => &migrate_user::MigrateUser,
        ActionKind::RollbackUser => &migrate_user::RollbackUser,
        ActionKind::CreateCustomer => &create_customer::CreateCustomer,
        ActionKind::MigrateCustomer => &stripe_customer::MigrateCustomer,
        ActionKind::RollbackCustomer => &stripe_customer::RollbackCustomer,
        ActionKind::Reencrypt => &reencrypt::Reencrypt,
    }
}

/// Performs `action`'s forward work with the handler for its kind.
pub async fn perform(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    match action.kind.parse() {
        Ok(kind) => handler(kind).perform(services, outbox, action).await,
        Err(_) => Err(ActionError::Permanent(format!(
            "this daemon has no handler for action kind {:?}; run a daemon version that knows it, then orgkeeper actions retry",
            action.kind
        ))),
    }
}

/// Work done once for a whole claim batch before its actions run, where one
/// transaction can replace one per action (today: provisioning keys).
pub async fn prepare(
    services: &Services,
    outbox: &Outbox,
    batch: &mut [Action],
) -> sqlx::Result<()> {
    provision_org::prepare(services, outbox, batch).await
}

/// Undoes what `action` may have done after a permanent failure `error`
/// with the handler for its kind (see [`Handler::compensate`]); an action of
/// a kind this daemon does not know has nothing to undo.
pub async fn compensate(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
    error: &str,
    may_retry: bool,
) -> sqlx::Result<Outcome> {
    match action.kind.parse() {
        Ok(kind) => {
            handler(kind)
                .compensate(services, outbox, action, error, may_retry)
                .await
        }
        Err(_) => nothing_to_undo(outbox, action).await,
    }
}

/// Ends an action that has nothing to undo as `failed`.
async fn nothing_to_undo(outbox: &Outbox, action: &Action) -> sqlx::Result<Outcome> {
    outbox
        .finish(
            action,
            ActionStatus::Failed,
            &json!({ "cleanup": "nothing to undo" }),
            None,
        )
        .await?;
    Ok(Outcome::Failed)
}

/// A required string field of an action's payload.
pub(crate) fn payload_str<'a>(action: &'a Action, field: &str) -> Result<&'a str, ActionError> {
    action
        .payload
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ActionError::Permanent(format!(
                "action {} ({}) has no {field:?} in its payload",
                action.id, action.kind
            ))
        })
}

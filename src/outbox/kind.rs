//! The outbox's vocabulary: what an action does ([`ActionKind`]), where it
//! stands ([`ActionStatus`]), and how one attempt ended ([`Outcome`]). The
//! table's CHECK constraints list the same kinds and statuses (a test
//! compares them).

use crate::names::named_enum;

named_enum! {
    /// What an outbox action does: `service.action`, as stored in
    /// `pending_external_actions.kind`. Each has one handler.
    pub enum ActionKind ("action kind") {
        /// Creates the organization's LiteLLM team, members and key.
        ProvisionOrg = "litellm.provision_org",
        /// Deletes a LiteLLM team (and with it its keys).
        DeleteTeam = "litellm.delete_team",
        /// Takes a deleted organization's LiteLLM team down.
        DeprovisionOrg = "litellm.deprovision_org",
        /// Adds a member to the organization's team, with a key.
        AddMember = "litellm.add_member",
        /// Removes a member from the team and deletes their key.
        RemoveMember = "litellm.remove_member",
        /// Replaces an organization's or member's key.
        RotateKey = "litellm.rotate_key",
        /// Checks that a stored key still works on the proxy.
        VerifyKey = "litellm.verify_key",
        /// Sets the team's budget.
        SetBudget = "litellm.set_budget",
        /// Moves a legacy user's LiteLLM state into their personal organization.
        MigrateUser = "litellm.migrate_user",
        /// Undoes a user migration on LiteLLM.
        RollbackUser = "litellm.rollback_user",
        /// Creates (or finds) the organization's Stripe customer.
        CreateCustomer = "stripe.create_customer",
        /// Tags a migrated user's Stripe customer with their organization.
        MigrateCustomer = "stripe.migrate_customer",
        /// Undoes a Stripe customer migration.
        RollbackCustomer = "stripe.rollback_customer",
        /// Re-encrypts secrets at rest under the current key.
        Reencrypt = "secrets.reencrypt",
    }
}

named_enum! {
    /// Where an outbox action stands (`pending_external_actions.status`).
    pub enum ActionStatus ("action status") {
        /// Waiting for a daemon (first try or a retry).
        Pending = "pending",
        /// A daemon holds the lease and performs it.
        Running = "running",
        /// Performed.
        Done = "done",
        /// Gave up; nothing (more) to undo.
        Failed = "failed",
        /// Gave up; the cleanup of what it did is owed.
        Compensating = "compensating",
        /// Gave up and undid what it had done.
        Compensated = "compensated",
        /// Cancelled by an operator.
        Cancelled = "cancelled",
    }
}

impl ActionStatus {
    /// Whether the action is over (`finished_at` is set).
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            ActionStatus::Done
                | ActionStatus::Failed
                | ActionStatus::Compensated
                | ActionStatus::Cancelled
        )
    }
}

named_enum! {
    /// How one attempt at an action ended on this replica (the `outcome`
    /// label of `orgkeeper_actions_total`).
    pub enum Outcome ("action outcome") {
        /// Performed.
        Done = "done",
        /// Failed transiently; scheduled again.
        Retried = "retried",
        /// Gave up and undid what it had done.
        Compensated = "compensated",
        /// Gave up.
        Failed = "failed",
        /// Another replica took the action over.
        LeaseLost = "lease_lost",
        /// Handed back unperformed at shutdown.
        Released = "released",
        /// Its cleanup failed transiently; scheduled again.
        CleanupRetried = "cleanup_retried",
    }
}

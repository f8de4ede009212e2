//! The outbox's vocabulary: what an action does ([`ActionKind`]), where it
//! stands ([`ActionStatus`]), and how one attempt ended ([`Outcome`]). The
//! table's CHECK constraints list the same kinds and statuses (a test
//! compares them).

use crate::names::named_enum;

named_enum! {
    /// What an outbox action does: `service.action`, as stored in
    /// `pending_external_actions.kind`. Each has one handler.
    pub enum ActionKind ("action kind") {
        /// Onboards an organization: its LiteLLM team, user, membership and the owner's key.
        ProvisionOrg = "litellm.provision_org",
        /// Removes the LiteLLM team of an organization row deleted directly.
        DeleteTeam = "litellm.delete_team",
        /// The second half of `orgkeeper.delete_org`: the team goes, then the row.
        DeprovisionOrg = "litellm.deprovision_org",
        /// Gives a new active member their own key in the organization's team.
        AddMember = "litellm.add_member",
        /// Takes the key of someone who stopped being an active member.
        RemoveMember = "litellm.remove_member",
        /// Replaces a member's key (the new one stored first).
        RotateKey = "litellm.rotate_key",
        /// Asks the proxy whether a member's key still works.
        VerifyKey = "litellm.verify_key",
        /// Brings a top-up to LiteLLM: the team's and the members' budgets.
        SetBudget = "litellm.set_budget",
        /// Moves a legacy user's LiteLLM budget and keys into their personal organization's team.
        MigrateUser = "litellm.migrate_user",
        /// Moves them back (undoes a user migration on LiteLLM).
        RollbackUser = "litellm.rollback_user",
        /// Creates (or finds) a new team organization's billing customer.
        CreateCustomer = "stripe.create_customer",
        /// Tags a migrated user's Stripe customer with their organization.
        MigrateCustomer = "stripe.migrate_customer",
        /// Untags it (undoes a Stripe customer migration).
        RollbackCustomer = "stripe.rollback_customer",
        /// Re-encrypts a migrated user's legacy secrets with the current key.
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

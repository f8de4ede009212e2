//! `litellm.delete_team`: removes an organization's LiteLLM team after a
//! trusted role deleted the organization row directly (`DELETE FROM
//! orgkeeper.org`; `orgkeeper.delete_org` goes through
//! `litellm.deprovision_org` instead) — only when the team is the one
//! orgkeeper made for it (by its metadata, tested now); a foreign team is
//! never touched. Deleting cascades the team's keys and memberships; an
//! already-deleted team counts as success. The write-back
//! (`orgkeeper.record_team_deleted`) completes the action and adds the
//! outcome to the organization's tombstone, in one transaction.

use super::{keys, payload_str, ActionError, Finish, Services};
use crate::outbox::Action;

/// Deletes the team named in the payload, if it is this organization's.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let team_id = payload_str(action, "team_id")?;
    let org_id = action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))?;
    let deletion = keys::delete_own_team(services, team_id, org_id).await?;
    let recorded: bool = sqlx::query_scalar("SELECT orgkeeper.record_team_deleted($1, $2, $3)")
        .bind(action.id)
        .bind(&action.lease)
        .bind(deletion.report(team_id))
        .fetch_one(&services.pool)
        .await?;
    if recorded {
        Ok(Finish::Recorded)
    } else {
        Err(ActionError::LeaseLost)
    }
}

perform_only_handler!(
    /// The `litellm.delete_team` handler.
    DeleteTeam,
    |services, _outbox, action| perform(services, action)
);

//! `litellm.delete_team`: removes an organization's LiteLLM team after the
//! organization was deleted — only when the team is the one orgkeeper made
//! for it (by its metadata, tested now); a foreign team is never touched.
//! Deleting cascades the team's keys and memberships; an already-deleted
//! team counts as success.

use super::{keys, payload_str, ActionError, Finish, Services};
use crate::outbox::Action;

/// Deletes the team named in the payload, if it is this organization's.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let team_id = payload_str(action, "team_id")?;
    let org_id = action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))?;
    let deletion = keys::delete_own_team(services, team_id, org_id).await?;
    Ok(Finish::Result(deletion.report(team_id)))
}

//! `litellm.delete_team`: removes an organization's LiteLLM team after the
//! organization was deleted. Deleting cascades the team's keys and
//! memberships; an already-deleted team counts as success.

use super::{call, payload_str, ActionError, Finish, Services};
use crate::litellm::Deleted;
use crate::outbox::Action;
use serde_json::json;

/// Deletes the team named in the payload.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let team_id = payload_str(action, "team_id")?;
    let outcome = call(services, "litellm", "team_delete", || {
        services.litellm.delete_team(team_id)
    })
    .await?;
    Ok(Finish::Result(json!({
        "team_id": team_id,
        "deleted": matches!(outcome, Deleted::Deleted),
    })))
}

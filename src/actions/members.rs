//! `litellm.add_member` / `litellm.remove_member`: keep a team's LiteLLM
//! membership in step with the organization's members.

use super::{call, payload_str, ActionError, Finish, Services};
use crate::litellm::{Created, Deleted};
use crate::outbox::Action;
use serde_json::json;

/// Creates the member's LiteLLM user if needed and adds it to the team.
pub async fn add(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let team_id = payload_str(action, "team_id")?;
    let user_id = payload_str(action, "user_id")?;
    let email: Option<String> = sqlx::query_scalar("SELECT orgkeeper.verified_email($1::uuid)")
        .bind(user_id)
        .fetch_optional(&services.pool)
        .await?
        .flatten();
    call(services, "litellm", "user_new", || {
        services.litellm.create_user(user_id, email.as_deref())
    })
    .await?;
    let added = call(services, "litellm", "team_member_add", || {
        services.litellm.add_team_member(team_id, user_id, None)
    })
    .await?;
    Ok(Finish::Result(json!({
        "team_id": team_id,
        "user_id": user_id,
        "already_member": matches!(added, Created::Existing),
    })))
}

/// Removes the member from the team (absent already counts as success).
pub async fn remove(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let team_id = payload_str(action, "team_id")?;
    let user_id = payload_str(action, "user_id")?;
    let removed = call(services, "litellm", "team_member_delete", || {
        services.litellm.remove_team_member(team_id, user_id)
    })
    .await?;
    Ok(Finish::Result(json!({
        "team_id": team_id,
        "user_id": user_id,
        "removed": matches!(removed, Deleted::Deleted),
    })))
}

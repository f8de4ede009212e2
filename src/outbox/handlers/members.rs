//! `litellm.add_member` / `litellm.remove_member`: every active member of an
//! organization has their own key in its team, and loses it when they stop
//! being an active member (enqueued by the trigger
//! `orgkeeper.org_member_key_lifecycle`).

use super::{call, keys, ActionError, Finish, Services};
use crate::litellm::Call as LiteLlmCall;
use crate::litellm::{Created, Deleted};
use crate::outbox::{Action, ActionKind, Outbox};
use serde_json::json;
use sqlx::Row;

/// Creates the member's LiteLLM user if needed, adds it to the team with
/// the configured budget, makes the member's own key and stores it
/// (encrypted, bound to their membership) — unless the membership stopped
/// being active meanwhile, when the key is deleted again.
pub async fn add(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    let (org_id, user_id, team_id) = keys::member_of(action)?;
    let context = sqlx::query("SELECT * FROM orgkeeper.member_key_context($1, $2)")
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(&services.pool)
        .await?;
    let row = match context {
        Some(row) if row.try_get::<bool, _>("active")? => row,
        _ => {
            return Ok(Finish::Result(json!({
                "team_id": team_id,
                "user_id": user_id,
                "skipped": "the membership is no longer active",
            })))
        }
    };
    let org_status: String = row.try_get("org_status")?;
    if org_status != "active" {
        // Only a team orgkeeper provisioned (and so knows is its own) is
        // ever joined.
        return Err(ActionError::Permanent(format!(
            "organization {org_id} is not provisioned (status {org_status}): its team may not be \
             orgkeeper's; fix and retry its {} action, then retry this one",
            ActionKind::ProvisionOrg
        )));
    }
    let email: Option<String> = row.try_get("email")?;
    let profile = keys::profile(row.try_get("org_version")?, row.try_get("model")?);
    let litellm = &services.litellm;
    let user = user_id.to_string();
    let new_user = keys::new_user(services, &user, email.as_deref(), &profile);
    call(services, LiteLlmCall::UserNew, || {
        litellm.create_user(&new_user)
    })
    .await?;
    let added = call(services, LiteLlmCall::TeamMemberAdd, || {
        litellm.add_team_member(team_id, &user, services.defaults.team_max_budget)
    })
    .await?;
    let (key, created) = keys::ensure(services, outbox, action, team_id, org_id, user_id).await?;
    let result = json!({
        "team_id": team_id,
        "user_id": user_id,
        "already_member": matches!(added, Created::Existing),
        "key_alias": keys::alias(services, org_id, user_id),
        "key_reused": matches!(created, Created::Existing),
    });
    keys::store(services, outbox, action, org_id, user_id, &key, result).await
}

/// Deletes the member's key at LiteLLM (by its unique alias) and removes
/// them from the team; either already gone counts as done.
pub async fn remove(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let (org_id, user_id, team_id) = keys::member_of(action)?;
    let litellm = &services.litellm;
    let alias = keys::alias(services, org_id, user_id);
    let key = call(services, LiteLlmCall::KeyDelete, || {
        litellm.delete_key_by_alias(&alias)
    })
    .await?;
    let user = user_id.to_string();
    let removed = call(services, LiteLlmCall::TeamMemberDelete, || {
        litellm.remove_team_member(team_id, &user)
    })
    .await?;
    Ok(Finish::Result(json!({
        "team_id": team_id,
        "user_id": user_id,
        "key_deleted": matches!(key, Deleted::Deleted),
        "removed": matches!(removed, Deleted::Deleted),
    })))
}

perform_only_handler!(
    /// The `litellm.add_member` handler.
    AddMember,
    |services, outbox, action| add(services, outbox, action)
);

perform_only_handler!(
    /// The `litellm.remove_member` handler.
    RemoveMember,
    |services, _outbox, action| remove(services, action)
);

//! `litellm.set_budget`: a top-up reaches LiteLLM — the team's `max_budget`
//! first, then every active member's `max_budget_in_team` (as OpenHands
//! does). Each call sets a value, so repeating the action is harmless.

use super::{call, payload_str, ActionError, Finish, Services};
use crate::litellm::Call as LiteLlmCall;
use crate::litellm::Deleted;
use crate::outbox::Action;
use serde_json::{json, Value};
use uuid::Uuid;

/// Sets the budget named in the payload on the team and its members.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let team_id = payload_str(action, "team_id")?;
    let max_budget = action.payload.get("max_budget").and_then(Value::as_f64);
    let litellm = &services.litellm;
    call(services, LiteLlmCall::TeamUpdate, || {
        litellm.update_team_budget(team_id, max_budget)
    })
    .await?;
    let members: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM orgkeeper.org_member WHERE org_id = $1 AND status = 'active' ORDER BY user_id",
    )
    .bind(action.org_id)
    .fetch_all(&services.pool)
    .await?;
    let mut updated = 0;
    for member in &members {
        let user = member.to_string();
        if call(services, LiteLlmCall::TeamMemberUpdate, || {
            litellm.update_member_budget(team_id, &user, max_budget)
        })
        .await?
            == Deleted::Deleted
        {
            updated += 1;
        }
    }
    Ok(Finish::Result(json!({
        "team_id": team_id,
        "max_budget": max_budget,
        "members_updated": updated,
        "members_absent": members.len() - updated,
    })))
}

perform_only_handler!(
    /// The `litellm.set_budget` handler.
    SetBudget,
    |services, _outbox, action| perform(services, action)
);

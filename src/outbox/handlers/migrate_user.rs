//! `litellm.migrate_user` and `litellm.rollback_user`: move a legacy user's
//! LiteLLM budget and keys into their personal org's team, and back.
//!
//! Migration follows LiteLLM's own migration steps: read the user's budget
//! and spend, apply the billing margin for settings versions below 4, treat
//! a budget of NULL or the unlimited sentinel as already migrated (a budget
//! of 0 is *not*), credit `max(budget - spend, 0)` to a new team, set the
//! user unlimited, add them to the team with the credits, and move their
//! keys into the team.
//!
//! The budget is read once: the computed credits are saved in the action's
//! progress before anything changes, so a retry after a crash between any
//! two steps reuses them and never counts a budget twice (after step "user
//! unlimited" the proxy would report the sentinel).

use super::provision_org::PERSONAL_TEAM_ALIAS;
use super::{
    call, keys, payload_str, ActionError, Compensating, Finish, Handler, Performing, Services,
};
use crate::litellm::Call as LiteLlmCall;
use crate::litellm::{Created, MemberBudget, NewTeam, UNLIMITED_MAX_BUDGET};
use crate::outbox::{write_outcomes, Action, BatchWrite, Fence, Outbox, Outcome};
use serde_json::{json, Value};
use sqlx::PgConnection;

/// The budget figures taken from LiteLLM before the migration changed anything.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// The user's budget as LiteLLM reported it, `None` = unlimited.
    reported_max_budget: Option<f64>,
    /// The user's spend as LiteLLM reported it.
    reported_spend: f64,
    /// What the team gets (after the margin); `None` = already migrated (unlimited).
    credits: Option<f64>,
}

impl Budget {
    fn to_json(self) -> Value {
        json!({
            "reported_max_budget": self.reported_max_budget,
            "reported_spend": self.reported_spend,
            "credits": self.credits,
        })
    }

    fn from_json(v: &Value) -> Option<Budget> {
        Some(Budget {
            reported_max_budget: v.get("reported_max_budget")?.as_f64(),
            reported_spend: v.get("reported_spend")?.as_f64()?,
            credits: v.get("credits")?.as_f64(),
        })
    }
}

/// The credits rule: NULL or the sentinel is "already migrated"; otherwise
/// `max(budget - spend, 0)`, both scaled by the margin when it applies.
fn credits(max_budget: Option<f64>, spend: f64, margin: Option<f64>) -> Budget {
    let factor = margin.unwrap_or(1.0);
    let credits = match max_budget {
        None => None,
        Some(b) if b == UNLIMITED_MAX_BUDGET => None,
        Some(b) => Some((b * factor - spend * factor).max(0.0)),
    };
    Budget {
        reported_max_budget: max_budget,
        reported_spend: spend,
        credits,
    }
}

/// Moves the user's budget and keys into the personal org's team.
pub async fn migrate(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    let user = payload_str(action, "user_id")?;
    let team_id = payload_str(action, "org_id")?;
    let org_id = team_id.parse().map_err(|_| {
        ActionError::Permanent(format!("action {}: org_id is not a UUID", action.id))
    })?;
    let margin = if action.payload.get("apply_margin").and_then(Value::as_bool) == Some(true) {
        action.payload.get("billing_margin").and_then(Value::as_f64)
    } else {
        None
    };
    let litellm = &services.litellm;

    let (budget, moved) = read_before_changes(services, outbox, action, user, margin).await?;

    let version = action.payload.get("user_version").and_then(Value::as_i64);
    let model = action.payload.get("model").cloned().unwrap_or(Value::Null);
    let mut metadata = keys::ownership(org_id);
    metadata["kind"] = json!("personal");
    metadata["migrated_user"] = json!(user);
    metadata["version"] = json!(version);
    metadata["model"] = model;
    let team = NewTeam {
        team_id,
        team_alias: PERSONAL_TEAM_ALIAS,
        max_budget: budget.credits,
        models: &services.defaults.allowed_models,
        metadata,
    };
    // An already-migrated user (by an earlier migration, ours or OpenHands')
    // keeps the team with their id when they are its member.
    let earlier_team = match budget.credits {
        Some(_) => false,
        None => call(services, LiteLlmCall::TeamInfo, || {
            litellm.team_info(team_id)
        })
        .await?
        .is_some_and(|t| t.members.iter().any(|m| m == user)),
    };
    let created = if earlier_team {
        Created::Existing
    } else {
        call(services, LiteLlmCall::TeamNew, || {
            litellm.create_team(&team)
        })
        .await?
    };
    // A personal org that existed before the migration (adopted) already has
    // its team: it gets the credits, and what it had is kept for a rollback.
    if let (Created::Existing, Some(credits)) = (created, budget.credits) {
        if action.progress.get("team_before").is_none() {
            let before = call(services, LiteLlmCall::TeamInfo, || {
                litellm.team_info(team_id)
            })
            .await?
            .map(|t| {
                json!({
                    "max_budget": t.team_budget.max_budget,
                    "member_budget": t.budget_of(user).max_budget,
                })
            });
            if !outbox
                .save_progress(action, &json!({ "team_before": before }))
                .await?
            {
                return Err(ActionError::LeaseLost);
            }
        }
        call(services, LiteLlmCall::TeamUpdate, || {
            litellm.update_team_budget(team_id, Some(credits))
        })
        .await?;
    }
    // No budget moves for an already-migrated user: the proxy is not told anything.
    if budget.credits.is_some() {
        call(services, LiteLlmCall::UserUpdate, || {
            litellm.update_user_max_budget(user, UNLIMITED_MAX_BUDGET)
        })
        .await?;
    }
    let joined = call(services, LiteLlmCall::TeamMemberAdd, || {
        litellm.add_team_member(team_id, user, budget.credits)
    })
    .await?;
    if let (Created::Existing, Some(credits)) = (joined, budget.credits) {
        call(services, LiteLlmCall::TeamMemberUpdate, || {
            litellm.update_member_budget(team_id, user, Some(credits))
        })
        .await?;
    }
    for key in &moved {
        call(services, LiteLlmCall::KeyUpdate, || {
            litellm.move_key_to_team(&key.token, Some(team_id))
        })
        .await?;
    }

    let result = json!({
        "team_id": team_id,
        "team_reused": earlier_team,
        "user_max_budget": match budget.credits {
            Some(_) => Some(UNLIMITED_MAX_BUDGET),
            None => budget.reported_max_budget,
        },
        "credits": budget.credits,
        "already_migrated": budget.credits.is_none(),
        "original": budget.to_json(),
        "keys_moved": moved.len(),
    });
    record_team_ready(outbox, action, team_id, &result).await
}

/// Reverses a migration at LiteLLM as OpenHands' downgrade does: the user
/// gets back what is left of the budget the migration moved (their budget
/// and spend in the team), rejoins the legacy shared team when one is
/// configured, every key the migration moved goes back to the team it came
/// from, and the user leaves the personal team (which the
/// `litellm.delete_team` that deleting the personal org enqueued deletes
/// after this).
pub async fn rollback(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let user = payload_str(action, "user_id")?;
    let team_id = payload_str(action, "team_id")?;
    let litellm = &services.litellm;
    // What the migration saved before changing anything: the budget as
    // LiteLLM reported it and the keys it moved; nothing saved means the
    // migration never touched them.
    let progress: Value = sqlx::query_scalar(
        "SELECT progress FROM orgkeeper.pending_external_actions
          WHERE id = $1 AND kind = 'litellm.migrate_user'",
    )
    .bind(
        action
            .payload
            .get("migrate_action_id")
            .and_then(Value::as_i64),
    )
    .fetch_optional(&services.pool)
    .await?
    .unwrap_or(Value::Null);
    let original = progress.get("budget").and_then(Budget::from_json);

    // As OpenHands' downgrade: the budget comes back from what is left of it
    // in the team (the member's budget and spend there, else the team's),
    // only if the migration moved one.
    let restored = match original {
        Some(Budget {
            credits: Some(_),
            reported_max_budget,
            reported_spend,
        }) => Some(
            match call(services, LiteLlmCall::TeamInfo, || {
                litellm.team_info(team_id)
            })
            .await?
            {
                Some(team) => team.budget_of(user),
                None => MemberBudget {
                    max_budget: reported_max_budget,
                    spend: reported_spend,
                },
            },
        ),
        _ => None,
    };
    if let Some(budget) = restored {
        call(services, LiteLlmCall::UserUpdate, || {
            litellm.restore_user_budget(user, budget)
        })
        .await?;
    }
    if let Some(legacy_team) = &services.defaults.legacy_team_id {
        call(services, LiteLlmCall::TeamMemberAdd, || {
            litellm.add_team_member(legacy_team, user, None)
        })
        .await?;
    }
    let moved = MovedKey::list(&progress);
    for key in &moved {
        call(services, LiteLlmCall::KeyUpdate, || {
            litellm.move_key_to_team(&key.token, key.from_team.as_deref())
        })
        .await?;
    }
    if action.payload.get("adopted").and_then(Value::as_bool) == Some(true) {
        // The personal org stays (it existed before the migration): its team
        // gets back the budgets it had, and the user stays in it.
        if let Some(before) = progress.get("team_before").filter(|b| b.is_object()) {
            let team_budget = before["max_budget"].as_f64();
            let member_budget = before["member_budget"].as_f64();
            call(services, LiteLlmCall::TeamUpdate, || {
                litellm.update_team_budget(team_id, team_budget)
            })
            .await?;
            call(services, LiteLlmCall::TeamMemberUpdate, || {
                litellm.update_member_budget(team_id, user, member_budget)
            })
            .await?;
        }
    } else {
        call(services, LiteLlmCall::TeamMemberDelete, || {
            litellm.remove_team_member(team_id, user)
        })
        .await?;
    }
    Ok(Finish::Result(json!({
        "team_id": team_id,
        "user_max_budget": restored.map(|b| b.max_budget),
        "user_spend": restored.map(|b| b.spend),
        "keys_moved_back": moved.len(),
        "budget_restored": restored.is_some(),
    })))
}

/// A key the migration moved into the personal team, and where it was.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MovedKey {
    /// The key's hashed token.
    token: String,
    /// Its team before the migration (`None` = no team).
    from_team: Option<String>,
}

impl MovedKey {
    /// The keys recorded in a migration's progress.
    fn list(progress: &Value) -> Vec<MovedKey> {
        progress
            .get("moved_keys")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

/// What the migration needs to know before it changes anything at LiteLLM:
/// the user's budget (credits computed with `margin`) and the user's own
/// legacy keys to move — keys in no team or in the legacy shared team
/// (`ORGKEEPER_LEGACY_TEAM_ID`), never keys orgkeeper made (those belong to
/// organizations, personal or not). Whatever the action's progress does not
/// hold yet is read and saved in one fenced write, before the first change:
/// a retry reuses both (the budget is never counted twice, the same keys
/// move), and a rollback puts each key back where it was.
async fn read_before_changes(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
    user: &str,
    margin: Option<f64>,
) -> Result<(Budget, Vec<MovedKey>), ActionError> {
    let litellm = &services.litellm;
    let mut fresh = serde_json::Map::new();
    let budget = match action.progress.get("budget").and_then(Budget::from_json) {
        Some(saved) => saved,
        None => {
            let info = call(services, LiteLlmCall::UserInfo, || litellm.user_info(user))
                .await?
                .ok_or_else(|| {
                    ActionError::Permanent(format!(
                        "LiteLLM has no user {user}: a legacy user must exist at the proxy to be migrated \
                         (create them there, or check LITELLM_BASE_URL), then: orgkeeper actions retry {}",
                        action.id
                    ))
                })?;
            let budget = credits(info.max_budget, info.spend, margin);
            fresh.insert("budget".into(), budget.to_json());
            budget
        }
    };
    let moved = if action.progress.get("moved_keys").is_some() {
        MovedKey::list(&action.progress)
    } else {
        let legacy_team = services.defaults.legacy_team_id.as_deref();
        let keys = call(services, LiteLlmCall::KeyList, || {
            litellm.list_user_keys(user)
        })
        .await?;
        let moved: Vec<MovedKey> = keys
            .into_iter()
            .filter(|k| {
                !k.managed_by_orgkeeper
                    && (k.team_id.is_none() || k.team_id.as_deref() == legacy_team)
            })
            .map(|k| MovedKey {
                token: k.token,
                from_team: k.team_id,
            })
            .collect();
        fresh.insert("moved_keys".into(), json!(moved));
        moved
    };
    if !fresh.is_empty() && !outbox.save_progress(action, &Value::Object(fresh)).await? {
        return Err(ActionError::LeaseLost);
    }
    Ok((budget, moved))
}

/// Ends a migration that failed for good as `failed` and marks the personal
/// org `failed`. Nothing is undone automatically: every step is idempotent,
/// so once the cause is fixed `orgkeeper actions retry` finishes the job.
pub async fn give_up(services: &Services, action: &Action, error: &str) -> sqlx::Result<Outcome> {
    let note = json!({
        "undone": false,
        "note": "LiteLLM changes made so far are kept; fix the cause, then: orgkeeper actions retry <id>",
    });
    sqlx::query_scalar::<_, bool>(
        "SELECT orgkeeper.record_provisioning_failed($1, $2, 'failed', $3, $4)",
    )
    .bind(action.id)
    .bind(&action.lease)
    .bind(error)
    .bind(&note)
    .fetch_one(&services.pool)
    .await?;
    Ok(Outcome::Failed)
}

/// The write-back of one migrated user's team, batched with others
/// (`orgkeeper.record_teams_ready`: each row fenced on its lease, in one
/// transaction). Outcome: whether it was recorded.
///
/// Committed asynchronously: when a database crash loses it, the action is
/// left running under a lease that expires and runs again, as after a
/// daemon killed just before this write-back. Every step is idempotent:
/// the team is the org's id, and what the budget move needs was saved
/// synchronously in `progress` before the calls that made it. The user's
/// next action is claimed only after this one finished, and that claim
/// commits synchronously, flushing this commit first.
struct TeamReady {
    fence: Fence,
    team_id: String,
    result: Value,
}

impl BatchWrite for TeamReady {
    type Outcome = bool;
    const ASYNC_COMMIT: bool = true;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<bool>> {
        let team_ids: Vec<&str> = rows.iter().map(|r| r.team_id.as_str()).collect();
        let results: Vec<&Value> = rows.iter().map(|r| &r.result).collect();
        let sql = "SELECT action_id, recorded FROM orgkeeper.record_teams_ready($1, $2, $3, $4)";
        write_outcomes(
            conn,
            sql,
            rows,
            |r| &r.fence,
            "team write-back",
            |q| q.bind(team_ids).bind(results),
        )
        .await
    }
}

async fn record_team_ready(
    outbox: &Outbox,
    action: &Action,
    team_id: &str,
    result: &Value,
) -> Result<Finish, ActionError> {
    let recorded = outbox
        .write_back(TeamReady {
            fence: Fence::of(action),
            team_id: team_id.to_string(),
            result: result.clone(),
        })
        .await?;
    if recorded {
        Ok(Finish::Recorded)
    } else {
        Err(ActionError::LeaseLost)
    }
}

/// The `litellm.migrate_user` handler.
pub(super) struct MigrateUser;

impl Handler for MigrateUser {
    fn perform<'a>(
        &'a self,
        services: &'a Services,
        outbox: &'a Outbox,
        action: &'a Action,
    ) -> Performing<'a> {
        Box::pin(migrate(services, outbox, action))
    }

    fn compensate<'a>(
        &'a self,
        services: &'a Services,
        _outbox: &'a Outbox,
        action: &'a Action,
        error: &'a str,
        _may_retry: bool,
    ) -> Compensating<'a> {
        Box::pin(give_up(services, action, error))
    }
}

perform_only_handler!(
    /// The `litellm.rollback_user` handler.
    RollbackUser,
    |services, _outbox, action| rollback(services, action)
);

#[cfg(test)]
mod tests {
    use super::credits;

    #[test]
    fn the_credits_rule_follows_litellms_migration() {
        let c = |b, s, m| credits(b, s, m).credits;
        assert_eq!(c(Some(10.0), 4.0, None), Some(6.0));
        assert_eq!(
            c(Some(0.0), 0.0, None),
            Some(0.0),
            "a budget of 0 is migrated, not skipped"
        );
        assert_eq!(
            c(Some(3.0), 5.0, None),
            Some(0.0),
            "overspent users get no credits"
        );
        assert_eq!(c(None, 5.0, None), None, "no budget = already migrated");
        assert_eq!(
            c(Some(1_000_000_000.0), 5.0, None),
            None,
            "the sentinel = already migrated"
        );
        assert_eq!(
            c(Some(10.0), 4.0, Some(2.0)),
            Some(12.0),
            "the margin scales budget and spend"
        );
    }
}

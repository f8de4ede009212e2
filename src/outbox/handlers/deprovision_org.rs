//! `litellm.deprovision_org`: the second half of `orgkeeper.delete_org`
//! (deletion in the open, `sql/deletion.sql`). The organization is
//! `deprovisioning`: invisible to the application, refused by every
//! management function, its name and id still taken. This handler deletes
//! its LiteLLM team — only when the team is the one orgkeeper made for it
//! ([`keys::delete_own_team`]; a foreign team is left and reported), which
//! cascades the members' keys and memberships — then
//! `orgkeeper.record_org_deleted` writes the tombstone (`org_deleted`),
//! deletes the row and completes the action in one fenced transaction.
//!
//! Failures: a transient one retries with the outbox's backoff; a permanent
//! one (or running out of attempts) ends the action `failed` through the
//! default compensation ("nothing to undo": the team call is idempotent).
//! The organization then stays `deprovisioning` and `orgkeeper actions list
//! --status failed` shows the action; `orgkeeper actions retry` finishes it.

use super::{keys, ActionError, Finish, Services};
use crate::outbox::Action;
use sqlx::Row;

/// Deletes the team if it is ours, then the org row with its tombstone.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let org_id = action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))?;
    let context = sqlx::query("SELECT * FROM orgkeeper.deprovisioning_context($1)")
        .bind(org_id)
        .fetch_optional(&services.pool)
        .await?;
    let team_id = match &context {
        Some(row) => {
            let status: String = row.try_get("provisioning_status")?;
            if status != "deprovisioning" {
                // Someone (a DBA) took the organization out of deletion:
                // its team is not ours to delete any more.
                return Err(ActionError::Permanent(format!(
                    "organization {org_id} is {status}, no longer deprovisioning: its team was left alone"
                )));
            }
            row.try_get::<String, _>("team_id")?
        }
        // Deleted directly meanwhile (its trigger wrote the tombstone and
        // enqueued litellm.delete_team); the team id is still in the payload.
        None => super::payload_str(action, "team_id")?.to_string(),
    };
    let deletion = keys::delete_own_team(services, &team_id, org_id).await?;
    let recorded: String = sqlx::query_scalar("SELECT orgkeeper.record_org_deleted($1, $2, $3)")
        .bind(action.id)
        .bind(&action.lease)
        .bind(deletion.report(&team_id))
        .fetch_one(&services.pool)
        .await?;
    match recorded.as_str() {
        "done" | "org_gone" => Ok(Finish::Recorded),
        "not_deprovisioning" => Err(ActionError::Permanent(format!(
            "organization {org_id} stopped deprovisioning while its team was being deleted; the row was kept"
        ))),
        _ => Err(ActionError::LeaseLost),
    }
}

perform_only_handler!(
    /// The `litellm.deprovision_org` handler.
    DeprovisionOrg,
    |services, _outbox, action| perform(services, action)
);

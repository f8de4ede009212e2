//! `litellm.provision_org`: the onboarding saga for one organization —
//! team, user, membership, the owner's own key — then the write-back.
//!
//! Every step is idempotent, so the daemon may die between any two calls:
//! * team: `team_id` is the org id (chosen by the database, never by a
//!   tenant) and its metadata says orgkeeper made it for this org; "already
//!   exists" is adopted only when `/team/info` shows that metadata — a
//!   foreign team fails the action and is never deleted;
//! * user: `user_id` is the owner's id; an email clash retries without email;
//! * membership: "already in team" counts as done;
//! * key: random, saved encrypted before `/key/generate` (see [`super::keys`]).
//!
//! The write-back (`orgkeeper.record_orgs_provisioned`) stores the results
//! and marks the action done in one transaction, fenced on the lease; the
//! write-backs of actions finishing together share one transaction
//! ([`Provisioned`]). The owner's key goes to their membership; no key is
//! shared by the org.

use super::keys::{self, TeamDeletion};
use super::{call, ActionError, Compensating, Finish, Handler, Performing, Services};
use crate::litellm::Call as LiteLlmCall;
use crate::litellm::{Created, NewTeam};
use crate::outbox::{
    write_outcomes, Action, ActionKind, ActionStatus, BatchWrite, Fence, Outbox, Outcome,
};
use crate::secrets::Place;
use serde_json::{json, Value};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// The team alias of personal organizations, as OpenHands names them.
pub(crate) const PERSONAL_TEAM_ALIAS: &str = "Personal Workspace";

/// Adds the fields of `extra` (an object) to `target` (an object).
fn merge(target: &mut Value, extra: &Value) {
    if let (Some(t), Some(e)) = (target.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
}

const ORG_GONE: &str =
    "the organization was deleted (or is being deleted) before provisioning finished";

/// The organization as provisioning needs it.
struct OrgContext {
    name: String,
    kind: String,
    owner: Uuid,
    owner_email: Option<String>,
    version: i32,
    model: String,
}

async fn load(services: &Services, org_id: Uuid) -> Result<Option<OrgContext>, ActionError> {
    let row = sqlx::query("SELECT * FROM orgkeeper.provisioning_context($1, $2)")
        .bind(org_id)
        .bind(&services.defaults.model)
        .fetch_optional(&services.pool)
        .await?;
    Ok(match row {
        Some(r) => Some(OrgContext {
            name: r.try_get("org_name")?,
            kind: r.try_get("org_kind")?,
            owner: r.try_get("owner_id")?,
            owner_email: r.try_get("owner_email")?,
            version: r.try_get("org_version")?,
            model: r.try_get("model")?,
        }),
        None => None,
    })
}

fn org_id(action: &Action) -> Result<Uuid, ActionError> {
    action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))
}

/// Chooses and saves the key of every provisioning action in a claim batch
/// that needs one, in one transaction instead of one per action. An action
/// whose save did not take (lease lost) is left for its handler.
pub async fn prepare(
    services: &Services,
    outbox: &Outbox,
    batch: &mut [Action],
) -> sqlx::Result<()> {
    let mut chosen: Vec<(usize, Value)> = batch
        .iter()
        .enumerate()
        .filter(|(_, a)| a.kind == ActionKind::ProvisionOrg.as_str() && keys::needs_choice(a))
        .map(|(i, a)| (i, keys::choose(services, a.id).1))
        .collect();
    if chosen.is_empty() {
        return Ok(());
    }
    let entries: Vec<(&Action, &Value)> = chosen.iter().map(|(i, p)| (&batch[*i], p)).collect();
    let saved = outbox.save_progress_many(&entries).await?;
    for ((i, progress), saved) in chosen.drain(..).zip(saved) {
        if saved {
            batch[i].progress = progress;
        }
    }
    Ok(())
}

/// Runs the saga's forward steps and the write-back.
pub async fn perform(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    let org_id = org_id(action)?;
    let org = load(services, org_id)
        .await?
        .ok_or_else(|| ActionError::Permanent(ORG_GONE.into()))?;
    let litellm = &services.litellm;
    let defaults = &services.defaults;
    let team_id = org_id.to_string();
    let owner = org.owner.to_string();
    let profile = keys::profile(org.version, &org.model);

    let mut metadata = keys::ownership(org_id);
    metadata["kind"] = json!(org.kind);
    merge(&mut metadata, &profile);
    let new_team = NewTeam {
        team_id: &team_id,
        team_alias: if org.kind == "personal" {
            PERSONAL_TEAM_ALIAS
        } else {
            &org.name
        },
        max_budget: defaults.team_max_budget,
        models: &defaults.allowed_models,
        metadata,
    };
    let team = call(services, LiteLlmCall::TeamNew, || {
        litellm.create_team(&new_team)
    })
    .await?;
    if matches!(team, Created::New)
        && !outbox
            .note_progress(action, &json!({ "team_created": true }))
            .await?
    {
        return Err(ActionError::LeaseLost);
    }
    let new_user = keys::new_user(services, &owner, org.owner_email.as_deref(), &profile);
    call(services, LiteLlmCall::UserNew, || {
        litellm.create_user(&new_user)
    })
    .await?;
    call(services, LiteLlmCall::TeamMemberAdd, || {
        litellm.add_team_member(&team_id, &owner, defaults.team_max_budget)
    })
    .await?;
    let (key, key_created) =
        keys::ensure(services, outbox, action, &team_id, org_id, org.owner).await?;
    let ciphertext = services
        .keyring
        .encrypt(&Place::member_key(org_id, org.owner), &key);

    let result = json!({
        "team_id": team_id,
        "team_created": matches!(team, Created::New),
        "user_id": owner,
        "key_alias": keys::alias(services, org_id, org.owner),
        "key_reused": matches!(key_created, Created::Existing),
    });
    let recorded = outbox
        .write_back(Provisioned {
            fence: Fence::of(action),
            team_id,
            owner: org.owner,
            model: org.model,
            base_url: defaults.llm_base_url.clone(),
            key_ciphertext: ciphertext,
            result,
        })
        .await?;
    match recorded.as_str() {
        "done" => Ok(Finish::Recorded),
        "org_gone" => Err(ActionError::Permanent(ORG_GONE.into())),
        _ => Err(ActionError::LeaseLost),
    }
}

/// Deletes the team if it is ours (cascading its keys and memberships; a
/// foreign team is left alone), then marks the org `failed` with the original error and the cleanup result. A transient
/// cleanup failure is retried later while `may_retry`; after that the action
/// ends `failed` with the cleanup error recorded.
pub async fn compensate(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
    error: &str,
    may_retry: bool,
) -> sqlx::Result<Outcome> {
    let team_id = action.org_id.map(|id| id.to_string()).unwrap_or_default();
    let deleted = match action.org_id {
        Some(org_id) => keys::delete_own_team(services, &team_id, org_id).await,
        None => Ok(TeamDeletion::Absent),
    };
    let (mut cleanup, status) = match deleted {
        Ok(deletion) => (deletion.report(&team_id), ActionStatus::Compensated),
        Err(ActionError::Transient(m)) if may_retry => {
            let delay = std::time::Duration::from_secs(5);
            outbox
                .retry_later(action, &format!("cleanup: {m}"), delay)
                .await?;
            return Ok(Outcome::CleanupRetried);
        }
        Err(e) => {
            let message = match e {
                ActionError::Transient(m) | ActionError::Permanent(m) => m,
                ActionError::LeaseLost => return Ok(Outcome::LeaseLost),
            };
            (
                json!({ "team_id": team_id, "team_deleted": false, "error": message }),
                ActionStatus::Failed,
            )
        }
    };
    // As stored: the note may come from this very attempt.
    let progress = outbox.stored_progress(action).await?;
    cleanup["team_created"] = json!(progress.get("team_created").is_some());
    sqlx::query_scalar::<_, bool>(
        "SELECT orgkeeper.record_provisioning_failed($1, $2, $3, $4, $5)",
    )
    .bind(action.id)
    .bind(&action.lease)
    .bind(status.as_str())
    .bind(error)
    .bind(&cleanup)
    .fetch_one(&services.pool)
    .await?;
    Ok(if status == ActionStatus::Compensated {
        Outcome::Compensated
    } else {
        Outcome::Failed
    })
}

/// The `litellm.provision_org` handler.
pub(super) struct ProvisionOrg;

impl Handler for ProvisionOrg {
    fn perform<'a>(
        &'a self,
        services: &'a Services,
        outbox: &'a Outbox,
        action: &'a Action,
    ) -> Performing<'a> {
        Box::pin(perform(services, outbox, action))
    }

    fn compensate<'a>(
        &'a self,
        services: &'a Services,
        outbox: &'a Outbox,
        action: &'a Action,
        error: &'a str,
        may_retry: bool,
    ) -> Compensating<'a> {
        Box::pin(compensate(services, outbox, action, error, may_retry))
    }
}

/// The provisioning write-back of one action, batched with others
/// (`orgkeeper.record_orgs_provisioned`: set-based, each row fenced on its
/// lease, in one transaction). Outcome: `done`, `org_gone` or `lease_lost`.
///
/// Committed asynchronously: when a database crash loses it, the org is
/// still pending and the action runs again under a new lease, finding the
/// team, user and membership there and the key in its progress (saved
/// synchronously before `/key/generate`): nothing is made twice.
struct Provisioned {
    fence: Fence,
    team_id: String,
    owner: Uuid,
    model: String,
    base_url: String,
    key_ciphertext: String,
    result: Value,
}

impl BatchWrite for Provisioned {
    type Outcome = String;
    const ASYNC_COMMIT: bool = true;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<String>> {
        let column = |f: fn(&Provisioned) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let (team_ids, models) = (column(|r| &r.team_id), column(|r| &r.model));
        let (base_urls, ciphertexts) = (column(|r| &r.base_url), column(|r| &r.key_ciphertext));
        let owners: Vec<Uuid> = rows.iter().map(|r| r.owner).collect();
        let results: Vec<&Value> = rows.iter().map(|r| &r.result).collect();
        let sql = "SELECT action_id, outcome FROM orgkeeper.record_orgs_provisioned($1, $2, $3, $4, $5, $6, $7, $8)";
        write_outcomes(
            conn,
            sql,
            rows,
            |r| &r.fence,
            "provisioning",
            |q| {
                q.bind(team_ids)
                    .bind(owners)
                    .bind(models)
                    .bind(base_urls)
                    .bind(ciphertexts)
                    .bind(results)
            },
        )
        .await
    }
}

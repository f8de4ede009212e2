//! `litellm.provision_org`: the onboarding saga for one organization —
//! team, user, membership, key — then the write-back.
//!
//! Every step is idempotent, so the daemon may die between any two calls:
//! * team: `team_id` is the org id; "already exists" is confirmed with `/team/info`;
//! * user: `user_id` is the owner's id; an email clash retries without email;
//! * membership: "already in team" counts as done;
//! * key: the key value is chosen and saved (encrypted) in the action's
//!   `progress` *before* `/key/generate` is called. A retry finds it there
//!   and asks `/key/info` first, so it never generates a second key; a
//!   `/key/generate` answer is only trusted once `/key/info` agrees (the
//!   proxy can answer 200 writing nothing, or 400 for a key it already has).
//!   The value is derived (HMAC) from the secret key and the org, so even a
//!   retry whose saved progress was lost (an asynchronous commit lost in a
//!   database crash) chooses the same key and finds it.
//!
//! The write-back (`orgkeeper.record_org_provisioned`) stores the results
//! and marks the action done in one transaction, fenced on the lease.

use super::{call, ActionError, Finish, Services};
use crate::litellm::{Created, Deleted, NewKey, NewTeam};
use crate::outbox::{Action, Outbox};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

/// The action kind this module handles.
pub const KIND: &str = "litellm.provision_org";

const ORG_GONE: &str = "the organization was deleted before provisioning finished";

/// The organization as provisioning needs it.
struct OrgContext {
    name: String,
    kind: String,
    owner: Uuid,
    owner_email: Option<String>,
}

async fn load(services: &Services, org_id: Uuid) -> Result<Option<OrgContext>, ActionError> {
    let row = sqlx::query("SELECT * FROM orgkeeper.provisioning_context($1)")
        .bind(org_id)
        .fetch_optional(&services.pool)
        .await?;
    Ok(match row {
        Some(r) => Some(OrgContext {
            name: r.try_get("org_name")?,
            kind: r.try_get("org_kind")?,
            owner: r.try_get("owner_id")?,
            owner_email: r.try_get("owner_email")?,
        }),
        None => None,
    })
}

fn org_id(action: &Action) -> Result<Uuid, ActionError> {
    action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))
}

/// The key value for an org (derived, see the module doc) and its ciphertext.
fn choose_key(services: &Services, org_id: Uuid) -> (SecretString, String) {
    let key = services.keyring.derive_api_key(&format!("org {org_id}"));
    let ciphertext = services.keyring.encrypt(&key);
    (key, ciphertext)
}

/// Chooses and saves the key of every provisioning action in a claim batch
/// that has none yet, in one transaction instead of one per action. An
/// action whose save did not take (lease lost) is left for its handler.
pub async fn prepare(
    services: &Services,
    outbox: &Outbox,
    batch: &mut [Action],
) -> sqlx::Result<()> {
    let mut chosen: Vec<(usize, Value)> = batch
        .iter()
        .enumerate()
        .filter(|(_, a)| a.kind == KIND && a.progress.get("key").is_none())
        .filter_map(|(i, a)| Some((i, json!({ "key": choose_key(services, a.org_id?).1 }))))
        .collect();
    if chosen.is_empty() {
        return Ok(());
    }
    let entries: Vec<(&Action, &Value)> = chosen.iter().map(|(i, p)| (&batch[*i], p)).collect();
    let saved = outbox.save_progress_many(&entries).await?;
    for (i, progress) in chosen.drain(..) {
        if saved.contains(&batch[i].id) {
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
    let models = vec![defaults.model.clone()];

    let new_team = NewTeam {
        team_id: &team_id,
        team_alias: &org.name,
        max_budget: defaults.team_max_budget,
        models: &models,
        metadata: json!({ "org_id": team_id, "kind": org.kind, "managed_by": "orgkeeper" }),
    };
    let team = call(services, "litellm", "team_new", || {
        litellm.create_team(&new_team)
    })
    .await?;
    call(services, "litellm", "user_new", || {
        litellm.create_user(&owner, org.owner_email.as_deref())
    })
    .await?;
    call(services, "litellm", "team_member_add", || {
        litellm.add_team_member(&team_id, &owner, defaults.team_max_budget)
    })
    .await?;

    // The key was normally chosen and saved with the whole claim batch
    // (`prepare`); an action that missed that saves its own.
    let (key, ciphertext) = match action.progress.get("key").and_then(Value::as_str) {
        Some(ct) => (services.keyring.decrypt(ct)?, ct.to_string()),
        None => {
            let (key, ct) = choose_key(services, org_id);
            if !outbox.save_progress(action, &json!({ "key": ct })).await? {
                return Err(ActionError::LeaseLost);
            }
            (key, ct)
        }
    };
    // Any earlier attempt may have created the key, even one whose saved
    // progress was lost (the key value is derived, so it is the same).
    let resumed = action.attempts > 1;
    let alias = format!(
        "{} - user {owner} - org {team_id}",
        defaults.key_alias_prefix
    );
    let new_key = NewKey {
        key: &key,
        key_alias: &alias,
        team_id: &team_id,
        user_id: &owner,
        models: &models,
        metadata: json!({ "org_id": team_id, "managed_by": "orgkeeper" }),
    };
    let key_created = if resumed {
        // An earlier attempt may have created the key: /key/info decides.
        call(services, "litellm", "key_ensure", || {
            litellm.ensure_key(&new_key)
        })
        .await?
    } else {
        generate_first_key(services, &new_key).await?
    };

    let result = json!({
        "team_id": team_id,
        "team_created": matches!(team, Created::New),
        "user_id": owner,
        "key_alias": alias,
        "key_reused": matches!(key_created, Created::Existing),
    });
    let recorded: String = sqlx::query_scalar(
        "SELECT orgkeeper.record_org_provisioned($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(action.id)
    .bind(&action.lease)
    .bind(&team_id)
    .bind(org.owner)
    .bind(&defaults.model)
    .bind(&defaults.llm_base_url)
    .bind(&ciphertext)
    .bind(&result)
    .fetch_one(&services.pool)
    .await?;
    match recorded.as_str() {
        "done" => Ok(Finish::Recorded),
        "org_gone" => Err(ActionError::Permanent(ORG_GONE.into())),
        _ => Err(ActionError::LeaseLost),
    }
}

/// Calls `/key/generate` on a first attempt, when no earlier attempt can have
/// created the key, so a 200 is trusted; an "alias already exists" answer or an
/// error (the call may have succeeded before failing) is settled by
/// `/key/info`.
async fn generate_first_key(
    services: &Services,
    new_key: &NewKey<'_>,
) -> Result<Created, ActionError> {
    let litellm = &services.litellm;
    let generated = call(services, "litellm", "key_generate", || {
        litellm.generate_key(new_key)
    })
    .await;
    if let Ok(Created::New) = generated {
        return Ok(Created::New);
    }
    if call(services, "litellm", "key_info", || {
        litellm.key_exists(new_key.key)
    })
    .await?
    {
        return Ok(Created::New);
    }
    match generated {
        Err(error) => Err(error),
        Ok(_) => Err(ActionError::Permanent(format!(
            "LiteLLM reports the key alias {:?} as taken by another key",
            new_key.key_alias
        ))),
    }
}

/// Deletes the team (cascading its keys and memberships), then marks the
/// org `failed` with the original error and the cleanup result. A transient
/// cleanup failure is retried later while `may_retry`; after that the action
/// ends `failed` with the cleanup error recorded.
pub async fn compensate(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
    error: &str,
    may_retry: bool,
) -> sqlx::Result<&'static str> {
    let team_id = action.org_id.map(|id| id.to_string()).unwrap_or_default();
    let (cleanup, status) = match call(services, "litellm", "team_delete", || {
        services.litellm.delete_team(&team_id)
    })
    .await
    {
        Ok(Deleted::Deleted) => (
            json!({ "team_id": team_id, "team_deleted": true }),
            "compensated",
        ),
        Ok(Deleted::AlreadyGone) => (
            json!({ "team_id": team_id, "team_deleted": false, "team_absent": true }),
            "compensated",
        ),
        Err(ActionError::Transient(m)) if may_retry => {
            let delay = std::time::Duration::from_secs(5);
            outbox
                .retry_later(action, &format!("cleanup: {m}"), delay)
                .await?;
            return Ok("cleanup_retried");
        }
        Err(e) => {
            let message = match e {
                ActionError::Transient(m) | ActionError::Permanent(m) => m,
                ActionError::LeaseLost => return Ok("lease_lost"),
            };
            (
                json!({ "team_id": team_id, "team_deleted": false, "error": message }),
                "failed",
            )
        }
    };
    sqlx::query_scalar::<_, bool>(
        "SELECT orgkeeper.record_provisioning_failed($1, $2, $3, $4, $5)",
    )
    .bind(action.id)
    .bind(&action.lease)
    .bind(status)
    .bind(error)
    .bind(&cleanup)
    .fetch_one(&services.pool)
    .await?;
    Ok(status)
}

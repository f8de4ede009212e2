//! A member's own LiteLLM key in their organization's team, and the team
//! ownership test that keeps orgkeeper's hands off teams it did not make.
//!
//! Keys are random (never derived), so no key can be computed from another
//! or from the secret key. The value is saved encrypted in the action's
//! `progress` *before* `/key/generate`, so a retry finds it and asks
//! `/key/info` first: no second key is ever made. When the saved value was
//! lost (an asynchronous commit lost in a database crash), the key an
//! earlier attempt may have made is found by its unique alias and deleted
//! before a fresh one is generated, as OpenHands does.

use super::{call, payload_str, ActionError, Finish, Services};
use crate::litellm::Call as LiteLlmCall;
use crate::litellm::{Created, Deleted, NewKey, NewUser, TeamOwner};
use crate::outbox::{write_outcomes, Action, BatchWrite, Fence, Outbox};
use crate::secrets::{random_api_key, Place};
use secrecy::SecretString;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

/// The field of `progress` holding the chosen key (encrypted).
const PROGRESS_KEY: &str = "key";

/// The metadata that marks a LiteLLM team or key as orgkeeper's, made for
/// `org_id`: `{"managed_by": "orgkeeper", "org_id": …}`.
pub(crate) fn ownership(org_id: Uuid) -> Value {
    json!({ "managed_by": "orgkeeper", "org_id": org_id.to_string() })
}

/// The membership an action is about: its org, the `user_id` and `team_id`
/// of its payload.
pub(crate) fn member_of(action: &Action) -> Result<(Uuid, Uuid, &str), ActionError> {
    let org_id = action
        .org_id
        .ok_or_else(|| ActionError::Permanent(format!("action {} has no org_id", action.id)))?;
    let user_id = payload_str(action, "user_id")?.parse().map_err(|_| {
        ActionError::Permanent(format!("action {}: user_id is not a UUID", action.id))
    })?;
    Ok((org_id, user_id, payload_str(action, "team_id")?))
}

/// A member's new key and the action's result, batched with others
/// (`orgkeeper.record_member_keys`: each row fenced on its lease, in one
/// transaction). Outcome: `done`, `member_gone` or `lease_lost`.
///
/// Committed asynchronously: the key's value was saved synchronously in the
/// action's `progress` before `/key/generate` ([`ensure`]), so when a
/// database crash loses this commit the action runs again under a new lease,
/// finds that value, makes sure LiteLLM has it (no second key) and stores it
/// again. Until then the member has no working key, as before this action.
struct MemberKey {
    fence: Fence,
    user_id: Uuid,
    ciphertext: String,
    result: Value,
}

impl BatchWrite for MemberKey {
    type Outcome = String;
    const ASYNC_COMMIT: bool = true;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<String>> {
        let users: Vec<Uuid> = rows.iter().map(|r| r.user_id).collect();
        let keys: Vec<&str> = rows.iter().map(|r| r.ciphertext.as_str()).collect();
        let results: Vec<&Value> = rows.iter().map(|r| &r.result).collect();
        let sql = "SELECT action_id, outcome FROM orgkeeper.record_member_keys($1, $2, $3, $4, $5)";
        write_outcomes(
            conn,
            sql,
            rows,
            |r| &r.fence,
            "member key write-back",
            |q| q.bind(users).bind(keys).bind(results),
        )
        .await
    }
}

/// Stores `key` as the member's own key and marks the action done with
/// `result`, batched with other actions' keys ([`MemberKey`]). When the
/// membership stopped being active meanwhile, the key is deleted at LiteLLM
/// again and the action finishes with `result` saying so.
pub(crate) async fn store(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
    org_id: Uuid,
    user_id: Uuid,
    key: &SecretString,
    mut result: Value,
) -> Result<Finish, ActionError> {
    let ciphertext = services
        .keyring
        .encrypt(&Place::member_key(org_id, user_id), key);
    let recorded = outbox
        .write_back(MemberKey {
            fence: Fence::of(action),
            user_id,
            ciphertext,
            result: result.clone(),
        })
        .await?;
    match recorded.as_str() {
        "done" => Ok(Finish::Recorded),
        "member_gone" => {
            call(services, LiteLlmCall::KeyDelete, || {
                services.litellm.delete_key(key)
            })
            .await?;
            result["key_deleted"] = json!("the membership stopped being active meanwhile");
            Ok(Finish::Result(result))
        }
        _ => Err(ActionError::LeaseLost),
    }
}

/// What OpenHands records on teams and users: `{"version", "model"}`.
pub(crate) fn profile(version: i32, model: &str) -> Value {
    json!({ "version": version, "model": model })
}

/// The LiteLLM user for `user_id`, as OpenHands creates it: in the legacy
/// shared team when one is configured, with the org's `profile`.
pub(crate) fn new_user<'a>(
    services: &'a Services,
    user_id: &'a str,
    email: Option<&'a str>,
    profile: &Value,
) -> NewUser<'a> {
    NewUser {
        user_id,
        email,
        teams: services.defaults.legacy_team_id.as_slice(),
        metadata: profile.clone(),
    }
}

/// The unique alias of a member's key in an organization's team.
pub(crate) fn alias(services: &Services, org_id: Uuid, user_id: Uuid) -> String {
    format!(
        "{} - user {user_id} - org {org_id}",
        services.defaults.key_alias_prefix
    )
}

/// A fresh random key and its ciphertext for the action's `progress`.
pub(crate) fn choose(services: &Services, action_id: i64) -> (SecretString, Value) {
    let key = random_api_key();
    let ciphertext = services
        .keyring
        .encrypt(&Place::action_progress(action_id, PROGRESS_KEY), &key);
    (key, json!({ PROGRESS_KEY: ciphertext }))
}

/// Whether a claim batch should choose this action's key up front: only on
/// its first attempt (a retry without a saved key must first delete the key
/// an earlier attempt may have made, see [`ensure`]).
pub(crate) fn needs_choice(action: &Action) -> bool {
    action.attempts == 1 && action.progress.get(PROGRESS_KEY).is_none()
}

/// Makes sure `user_id` has a key in `team_id` with the action's chosen
/// value, and returns it. Idempotent across attempts (module doc).
pub(crate) async fn ensure(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
    team_id: &str,
    org_id: Uuid,
    user_id: Uuid,
) -> Result<(SecretString, Created), ActionError> {
    let litellm = &services.litellm;
    let alias = alias(services, org_id, user_id);
    let (key, earlier_attempt_may_have_it) =
        match action.progress.get(PROGRESS_KEY).and_then(Value::as_str) {
            Some(ct) => (
                services
                    .keyring
                    .decrypt(&Place::action_progress(action.id, PROGRESS_KEY), ct)?,
                action.attempts > 1,
            ),
            None => {
                if action.attempts > 1 {
                    // The saved key was lost: never re-derive; replace.
                    call(services, LiteLlmCall::KeyDelete, || {
                        litellm.delete_key_by_alias(&alias)
                    })
                    .await?;
                }
                let (key, progress) = choose(services, action.id);
                if !outbox.save_progress(action, &progress).await? {
                    return Err(ActionError::LeaseLost);
                }
                (key, false)
            }
        };
    let user = user_id.to_string();
    let new_key = NewKey {
        key: &key,
        key_alias: &alias,
        team_id,
        user_id: &user,
        models: &services.defaults.allowed_models,
        metadata: ownership(org_id),
    };
    let created = if earlier_attempt_may_have_it {
        call(services, LiteLlmCall::KeyGenerate, || {
            litellm.ensure_key(&new_key)
        })
        .await?
    } else {
        generate_fresh(services, &new_key).await?
    };
    Ok((key, created))
}

/// Calls `/key/generate` for a key no earlier attempt can have made, so a
/// 200 is trusted; an "alias already exists" answer or an error (the call
/// may have succeeded before failing) is settled by `/key/info`.
async fn generate_fresh(services: &Services, new_key: &NewKey<'_>) -> Result<Created, ActionError> {
    let litellm = &services.litellm;
    let generated = call(services, LiteLlmCall::KeyGenerate, || {
        litellm.generate_key(new_key)
    })
    .await;
    if let Ok(Created::New) = generated {
        return Ok(Created::New);
    }
    if call(services, LiteLlmCall::KeyInfo, || {
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

/// What deleting an organization's team came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TeamDeletion {
    /// Ours, and deleted now (with its keys and memberships).
    Deleted,
    /// No such team.
    Absent,
    /// Someone else's team (its metadata): left untouched.
    Foreign(String),
}

impl TeamDeletion {
    /// The cleanup report for `team_id`.
    pub(crate) fn report(&self, team_id: &str) -> Value {
        match self {
            TeamDeletion::Deleted => json!({ "team_id": team_id, "team_deleted": true }),
            TeamDeletion::Absent => {
                json!({ "team_id": team_id, "team_deleted": false, "team_absent": true })
            }
            TeamDeletion::Foreign(metadata) => json!({
                "team_id": team_id,
                "team_deleted": false,
                "team_foreign": metadata,
            }),
        }
    }
}

/// Deletes `team_id` only if it is the team orgkeeper made for `org_id`,
/// tested at delete time by its metadata ([`ownership`]).
pub(crate) async fn delete_own_team(
    services: &Services,
    team_id: &str,
    org_id: Uuid,
) -> Result<TeamDeletion, ActionError> {
    let litellm = &services.litellm;
    let ours = ownership(org_id);
    match call(services, LiteLlmCall::TeamInfo, || {
        litellm.team_owner(team_id, &ours)
    })
    .await?
    {
        TeamOwner::Absent => Ok(TeamDeletion::Absent),
        TeamOwner::Foreign(metadata) => {
            tracing::warn!(team_id, %org_id, "LiteLLM team is not this organization's; left untouched");
            Ok(TeamDeletion::Foreign(metadata))
        }
        TeamOwner::Ours => Ok(
            match call(services, LiteLlmCall::TeamDelete, || {
                litellm.delete_team(team_id)
            })
            .await?
            {
                Deleted::Deleted => TeamDeletion::Deleted,
                Deleted::AlreadyGone => TeamDeletion::Absent,
            },
        ),
    }
}

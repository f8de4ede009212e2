//! `litellm.rotate_key`: replaces a member's LiteLLM key — the new key is
//! stored first, then the old one is deleted at LiteLLM, so the member is
//! never left without a working key.
//!
//! Steps, each safe to repeat after a crash:
//! 1. note the old key's token and ciphertext in `progress`;
//! 2. rename the old key out of the way (aliases are unique at LiteLLM; a
//!    member with no key on record has whatever holds their alias deleted);
//! 3. make the new key under the member's alias ([`keys::ensure`]);
//! 4. store it in place of the old one, compare-and-set on the old
//!    ciphertext (`orgkeeper.record_rotated_key`, which notes "stored"), or
//!    on the value that replaced it when that still holds the old key
//!    (re-encrypted meanwhile by `orgkeeper secrets rotate`);
//! 5. delete the old key (already gone = done).

use super::{call, keys, ActionError, Finish, Services};
use crate::litellm::Call as LiteLlmCall;
use crate::litellm::{hash_key, Deleted};
use crate::outbox::{Action, Outbox};
use crate::secrets::Place;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use uuid::Uuid;

/// Rotates the key of the member named in the payload.
pub async fn perform(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    let (org_id, user_id, team_id) = keys::member_of(action)?;
    let litellm = &services.litellm;
    let place = Place::member_key(org_id, user_id);

    let mut progress = action.progress.clone();
    if progress.get("old").is_none() {
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $2",
        )
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(&services.pool)
        .await?
        .flatten();
        let token = match &stored {
            Some(ct) => Some(hash_key(
                services.keyring.decrypt(&place, ct)?.expose_secret(),
            )),
            None => None,
        };
        let old = json!({ "old": { "ciphertext": stored, "token": token } });
        if !outbox.save_progress(action, &old).await? {
            return Err(ActionError::LeaseLost);
        }
        progress["old"] = old["old"].clone();
    }
    let old_ciphertext = progress["old"]["ciphertext"].as_str().map(str::to_owned);
    let old_token = progress["old"]["token"].as_str().map(str::to_owned);

    let mut result = json!({ "team_id": team_id, "user_id": user_id, "old_key_deleted": false });
    if progress.get("stored").is_none() {
        let alias = keys::alias(services, org_id, user_id);
        match &old_token {
            Some(token) => {
                let retired = format!("{alias} (replaced by action {})", action.id);
                call(services, LiteLlmCall::KeyUpdate, || {
                    litellm.rename_key(token, &retired)
                })
                .await?;
            }
            // No key on record: whatever holds the member's alias is stale.
            None => {
                call(services, LiteLlmCall::KeyDelete, || {
                    litellm.delete_key_by_alias(&alias)
                })
                .await?;
            }
        }
        let current = Action {
            progress: progress.clone(),
            ..action.clone()
        };
        let (key, _) = keys::ensure(services, outbox, &current, team_id, org_id, user_id).await?;
        let ciphertext = services.keyring.encrypt(&place, &key);
        let mut expected = old_ciphertext.clone();
        let mut tries = 0;
        let recorded = loop {
            let recorded: String =
                sqlx::query_scalar("SELECT orgkeeper.record_rotated_key($1, $2, $3, $4, $5)")
                    .bind(action.id)
                    .bind(&action.lease)
                    .bind(user_id)
                    .bind(&expected)
                    .bind(&ciphertext)
                    .fetch_one(&services.pool)
                    .await?;
            tries += 1;
            if recorded == "changed" && tries < 3 {
                // `orgkeeper secrets rotate` re-encrypts without changing
                // the key: compare-and-set again on the value holding it.
                if let Some(same) =
                    reencrypted(services, &place, user_id, org_id, &old_token, &expected).await?
                {
                    expected = Some(same);
                    continue;
                }
            }
            break recorded;
        };
        match recorded.as_str() {
            "stored" => {}
            "changed" => {
                // The membership changed meanwhile (removed, disabled, or
                // given another key): neither key may stay behind.
                call(services, LiteLlmCall::KeyDelete, || {
                    litellm.delete_key(&key)
                })
                .await?;
                result["skipped"] = json!("the membership changed during the rotation");
            }
            _ => return Err(ActionError::LeaseLost),
        }
    }
    if let Some(token) = &old_token {
        let deleted = call(services, LiteLlmCall::KeyDelete, || {
            litellm.delete_key_by_token(token)
        })
        .await?;
        result["old_key_deleted"] = Value::Bool(deleted == Deleted::Deleted);
    }
    Ok(Finish::Result(result))
}

/// The member's stored ciphertext when it is not `noted` but still holds the
/// key whose token is `old_token` (re-encrypted meanwhile, e.g. by
/// `orgkeeper secrets rotate`); `None` when the membership is not active,
/// holds no key, or holds another one.
async fn reencrypted(
    services: &Services,
    place: &Place,
    user_id: Uuid,
    org_id: Uuid,
    old_token: &Option<String>,
    noted: &Option<String>,
) -> Result<Option<String>, ActionError> {
    let Some(old_token) = old_token else {
        return Ok(None);
    };
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member
          WHERE org_id = $1 AND user_id = $2 AND status = 'active'",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(&services.pool)
    .await?
    .flatten();
    Ok(stored.filter(|ct| {
        Some(ct) != noted.as_ref()
            && services
                .keyring
                .decrypt(place, ct)
                .is_ok_and(|key| hash_key(key.expose_secret()) == *old_token)
    }))
}

perform_only_handler!(
    /// The `litellm.rotate_key` handler.
    RotateKey,
    |services, outbox, action| perform(services, outbox, action)
);

//! `litellm.verify_key`: asks the proxy whether a member's key still works,
//! as an application calling the LLM with it would (`GET /v1/models`; only
//! 401/403 mean invalid, anything else is inconclusive). With
//! `"regenerate": true` (user migration) a member whose key is invalid or
//! missing gets a new managed key in the team, stored as theirs — but only
//! a key meant for this LiteLLM proxy: one used with another base URL (the
//! user's own provider) is neither checked nor replaced.

use super::{keys, ActionError, Finish, Services};
use crate::litellm::Call as LiteLlmCall;
use crate::outbox::{Action, Outbox};
use crate::secrets::Place;
use serde_json::{json, Value};
use sqlx::Row;

/// Checks (and, when asked, replaces) the key of the member in the payload.
pub async fn perform(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    let (org_id, user_id, team_id) = keys::member_of(action)?;
    let regenerate = action.payload.get("regenerate").and_then(Value::as_bool) == Some(true);
    let row = sqlx::query("SELECT * FROM orgkeeper.member_key_context($1, $2)")
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(&services.pool)
        .await?;
    let mut result = json!({ "team_id": team_id, "user_id": user_id });
    let Some(row) = row.filter(|r| r.try_get::<bool, _>("active").unwrap_or(false)) else {
        result["skipped"] = json!("the membership is no longer active");
        return Ok(Finish::Result(result));
    };
    let base_url: Option<String> = row.try_get("llm_base_url")?;
    let proxy = services.litellm.base_url();
    if let Some(other) = base_url.filter(|u| u.trim_end_matches('/') != proxy) {
        result["skipped"] = json!(format!(
            "the key is used with {other}, not this LiteLLM proxy"
        ));
        return Ok(Finish::Result(result));
    }
    let place = Place::member_key(org_id, user_id);
    let stored: Option<String> = row.try_get("key_ciphertext")?;
    let valid = match &stored {
        Some(ct) => {
            let key = services.keyring.decrypt(&place, ct)?;
            let started = std::time::Instant::now();
            let valid = services.litellm.key_valid(&key).await;
            services
                .metrics
                .call_latency(LiteLlmCall::Models, started.elapsed());
            valid
        }
        None => Some(false),
    };
    result["valid"] = json!(valid);
    result["had_key"] = json!(stored.is_some());
    if !(regenerate && valid == Some(false)) {
        return Ok(Finish::Result(result));
    }
    let (key, _) = keys::ensure(services, outbox, action, team_id, org_id, user_id).await?;
    result["regenerated"] = json!(true);
    keys::store(services, outbox, action, org_id, user_id, &key, result).await
}

perform_only_handler!(
    /// The `litellm.verify_key` handler.
    VerifyKey,
    |services, outbox, action| perform(services, outbox, action)
);

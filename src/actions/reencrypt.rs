//! `secrets.reencrypt`: re-encrypts a migrated user's legacy ciphertext
//! with the current key. The database never decrypts; this handler reads
//! each listed value, decrypts it with the legacy key, encrypts it with the
//! current one and swaps it in by compare-and-set, so a retry skips what is
//! done and a concurrent change is never overwritten.

use super::{ActionError, Finish, Services};
use crate::outbox::Action;
use crate::secrets::Keyring;
use serde_json::{json, Value};

/// Re-encrypts every `{table, column, key}` item of the payload.
pub async fn perform(services: &Services, action: &Action) -> Result<Finish, ActionError> {
    let items = action
        .payload
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ActionError::Permanent(format!("action {} has no items to re-encrypt", action.id))
        })?;
    let (mut reencrypted, mut already, mut gone) = (0, 0, 0);
    for item in items {
        let (Some(table), Some(column), Some(key)) = (
            item.get("table").and_then(Value::as_str),
            item.get("column").and_then(Value::as_str),
            item.get("key"),
        ) else {
            return Err(ActionError::Permanent(format!(
                "malformed item {item} in action {}",
                action.id
            )));
        };
        let current: Option<String> =
            sqlx::query_scalar("SELECT orgkeeper.read_secret($1, $2, $3)")
                .bind(table)
                .bind(column)
                .bind(key)
                .fetch_one(&services.pool)
                .await?;
        let Some(current) = current else {
            gone += 1;
            continue;
        };
        if Keyring::is_current_format(&current) {
            already += 1;
            continue;
        }
        let plain = services.keyring.decrypt_legacy(&current)?;
        let replaced: bool =
            sqlx::query_scalar("SELECT orgkeeper.replace_secret($1, $2, $3, $4, $5)")
                .bind(table)
                .bind(column)
                .bind(key)
                .bind(&current)
                .bind(services.keyring.encrypt(&plain))
                .fetch_one(&services.pool)
                .await?;
        if replaced {
            reencrypted += 1;
        } else {
            // Changed since we read it: the next attempt looks again.
            return Err(ActionError::Transient(format!(
                "{table}.{column} changed while being re-encrypted"
            )));
        }
    }
    Ok(Finish::Result(json!({
        "reencrypted": reencrypted,
        "already_current": already,
        "gone": gone,
        "key_id": services.keyring.current_key_id(),
    })))
}

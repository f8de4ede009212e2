//! `secrets.reencrypt`: re-encrypts a migrated user's legacy secrets with
//! the current key. The database never decrypts; this handler reads the
//! listed values in one call, reads each the way OpenHands does (a Fernet
//! token under `ORGKEEPER_LEGACY_JWT_SECRET`, or a plaintext kept as it is;
//! see [`crate::legacy_secrets`]), encrypts it with the current key bound to
//! its place, and swaps them all in by compare-and-set together with marking
//! the action done, in one transaction (`orgkeeper.record_reencrypted_many`,
//! batched with the other re-encryptions finishing at the same time). A
//! value changed meanwhile makes the whole swap roll back and the action
//! retry; a migration rolled back meanwhile makes it write nothing. A token
//! that does not authenticate (the wrong jwt secret, or damaged data) fails
//! the action permanently, naming the user and every such field, and writes
//! nothing: a ciphertext is never stored as if it were a key.
//!
//! A legacy value OpenHands kept in plaintext also has a copy the migration
//! keeps for rollback (`user_migration.legacy_ciphertext`): in the same
//! transaction, that copy is replaced by the value sealed as OpenHands seals
//! credentials (a Fernet token under `ORGKEEPER_LEGACY_JWT_SECRET`), so no
//! plaintext copy stays at rest and a rollback restores a value OpenHands
//! reads the same. Without the legacy secret the copy cannot be sealed; the
//! result counts it (`plaintext_not_sealed_for_rollback`).

use super::{ActionError, Finish, Services};
use crate::outbox::{write_outcomes, Action, ActionKind, BatchWrite, Fence, Outbox};
use crate::secrets::{Keyring, Place};
use serde_json::{json, Value};
use sqlx::PgConnection;

/// Re-encrypts every `{table, column, key}` item of the payload.
pub async fn perform(
    services: &Services,
    outbox: &Outbox,
    action: &Action,
) -> Result<Finish, ActionError> {
    let items = action
        .payload
        .get("items")
        .filter(|i| i.is_array())
        .ok_or_else(|| {
            ActionError::Permanent(format!("action {} has no items to re-encrypt", action.id))
        })?;
    let stored: Vec<(Value, Option<String>)> =
        sqlx::query_as("SELECT item, value FROM orgkeeper.read_secrets($1)")
            .bind(items)
            .fetch_all(&services.pool)
            .await?;
    let (mut swaps, mut already, mut gone, mut plaintext, mut unsealed) = (Vec::new(), 0, 0, 0, 0);
    let mut unreadable = Vec::new();
    for (item, value) in stored {
        match value {
            None => gone += 1,
            Some(current) if Keyring::is_orgkeeper_format(&current) => already += 1,
            Some(current) => {
                let place = Place::from_item(&item).ok_or_else(|| {
                    ActionError::Permanent(format!(
                        "action {}: item {item} does not name a row holding a secret",
                        action.id
                    ))
                })?;
                let plain = match services.keyring.decrypt_legacy(&current) {
                    Ok(plain) => plain,
                    Err(e) => {
                        unreadable.push(format!("{place} {e}"));
                        continue;
                    }
                };
                let mut swap = json!({
                    "table": item["table"],
                    "column": item["column"],
                    "key": item["key"],
                    "old": current,
                    "new": services.keyring.encrypt(&place, plain.secret()),
                });
                if plain.was_plaintext() {
                    plaintext += 1;
                    // The rollback copy of a plaintext legacy value (if the
                    // migration kept one) is sealed as OpenHands would have.
                    match services.keyring.seal_legacy(plain.secret()) {
                        Some(sealed) => swap["legacy_sealed"] = json!(sealed),
                        None => unsealed += 1,
                    }
                }
                swaps.push(swap);
            }
        }
    }
    if !unreadable.is_empty() {
        let user = action
            .user_id
            .map_or_else(|| "(unknown)".to_string(), |u| u.to_string());
        return Err(ActionError::Permanent(format!(
            "{} of user {user}: nothing was re-encrypted, because {}",
            ActionKind::Reencrypt,
            unreadable.join("; ")
        )));
    }
    let result = json!({
        "reencrypted": swaps.len(),
        "plaintext": plaintext,
        "plaintext_not_sealed_for_rollback": unsealed,
        "already_current": already,
        "gone": gone,
        "key_id": services.keyring.current_key_id(),
    });
    let recorded = outbox
        .write_back(Reencrypted {
            fence: Fence::of(action),
            swaps: Value::Array(swaps),
            result,
        })
        .await?;
    match recorded.as_str() {
        "lease_lost" => Err(ActionError::LeaseLost),
        _ => Ok(Finish::Recorded),
    }
}

/// The write-back of one re-encryption, batched with others
/// (`orgkeeper.record_reencrypted_many`: per row fenced on its lease, the
/// swaps by compare-and-set, the completion and the follow-up
/// `litellm.verify_key`). Outcome: `done`, `skipped` or `lease_lost`.
///
/// Committed asynchronously: when a database crash loses it, nothing outside
/// the database happened since the values were read (re-encryption is
/// local), the legacy values are still in place and the action runs again
/// under a new lease, re-encrypting them; the `litellm.verify_key` it
/// enqueued was lost with it and is enqueued again.
struct Reencrypted {
    fence: Fence,
    swaps: Value,
    result: Value,
}

impl BatchWrite for Reencrypted {
    type Outcome = String;
    const ASYNC_COMMIT: bool = true;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<String>> {
        let swaps: Vec<&Value> = rows.iter().map(|r| &r.swaps).collect();
        let results: Vec<&Value> = rows.iter().map(|r| &r.result).collect();
        let sql =
            "SELECT action_id, outcome FROM orgkeeper.record_reencrypted_many($1, $2, $3, $4)";
        write_outcomes(
            conn,
            sql,
            rows,
            |r| &r.fence,
            "re-encryption",
            |q| q.bind(swaps).bind(results),
        )
        .await
    }
}

perform_only_handler!(
    /// The `secrets.reencrypt` handler.
    Reencrypt,
    |services, outbox, action| perform(services, outbox, action)
);

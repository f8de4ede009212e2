//! The key calls: generate, look up, validate, list, rename, move, delete.

use super::error::{chain, Answer};
use super::{hash_key, Created, Deleted, LiteLlmClient, LiteLlmError};
use crate::litellm::Call;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use std::fmt;

/// Page size used when listing a user's keys.
const KEY_LIST_PAGE_SIZE: usize = 100;

/// A key to create (`POST /key/generate`) with a caller-chosen value.
pub struct NewKey<'a> {
    /// The key itself (`sk-…`, at least 16 characters), chosen and persisted by the caller first.
    pub key: &'a SecretString,
    /// Unique alias (`OpenHands Cloud - user {user_id} - org {org_id}`).
    pub key_alias: &'a str,
    /// Team the key spends from.
    pub team_id: &'a str,
    /// User the key belongs to.
    pub user_id: &'a str,
    /// Models the key may use (empty = the team's).
    pub models: &'a [String],
    /// Free-form metadata stored on the key.
    pub metadata: Value,
}

impl fmt::Debug for NewKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &"[REDACTED]")
            .field("key_alias", &self.key_alias)
            .field("team_id", &self.team_id)
            .field("user_id", &self.user_id)
            .field("models", &self.models)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// One key of a user as `GET /key/list` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The hashed token the proxy identifies the key by (never the key itself).
    pub token: String,
    /// The team the key belongs to, if any.
    pub team_id: Option<String>,
    /// Whether its metadata says orgkeeper made it (`managed_by`).
    pub managed_by_orgkeeper: bool,
}

impl LiteLlmClient {
    /// `GET /key/info`: whether the key is in the proxy's database. Asks by
    /// the key's SHA-256 token, so the key never travels in a URL.
    pub async fn key_exists(&self, key: &SecretString) -> Result<bool, LiteLlmError> {
        self.token_exists(&hash_key(key.expose_secret())).await
    }

    /// `GET /key/info` by the key's token: `None` when the proxy does not have
    /// the key, else `Some(team)` with the team it spends from.
    pub async fn key_team(
        &self,
        key: &SecretString,
    ) -> Result<Option<Option<String>>, LiteLlmError> {
        const CALL: Call = Call::KeyInfo;
        let token = hash_key(key.expose_secret());
        let answer = self.get(CALL, &[("key", &token)]).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(self.fail(CALL, &answer));
        }
        Ok(Some(
            answer.json["info"]["team_id"].as_str().map(str::to_owned),
        ))
    }

    /// `GET /key/info?key=<token>` for a hashed token (as `/key/list` returns).
    pub async fn token_exists(&self, token: &str) -> Result<bool, LiteLlmError> {
        const CALL: Call = Call::KeyInfo;
        let answer = self.get(CALL, &[("key", token)]).await?;
        if answer.is_success() {
            return Ok(true);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /key/generate` with the caller's key value. [`Created::New`] is a
    /// 200 — which writes nothing when the key value already existed, so it is
    /// trustworthy only for a freshly chosen random key; [`Created::Existing`]
    /// is a 400 "alias already exists", which may be an earlier attempt's
    /// success or another key's alias. Confirm with
    /// [`key_exists`](Self::key_exists), or use [`ensure_key`](Self::ensure_key).
    pub async fn generate_key(&self, key: &NewKey<'_>) -> Result<Created, LiteLlmError> {
        const CALL: Call = Call::KeyGenerate;
        let value = key.key.expose_secret();
        if !value.starts_with("sk-") || value.chars().count() < 16 {
            // Checked here so that the proxy cannot echo a malformed key into an error.
            return Err(LiteLlmError::permanent(
                CALL,
                0,
                format!(
                    "the key for alias {:?} must start with \"sk-\" and be at least 16 characters long",
                    key.key_alias
                ),
            ));
        }
        let body = json!({
            "key": key.key.expose_secret(),
            "key_alias": key.key_alias,
            "team_id": key.team_id,
            "user_id": key.user_id,
            "models": key.models,
            "metadata": key.metadata,
        });
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Created::New);
        }
        if is_alias_taken(&answer) {
            return Ok(Created::Existing);
        }
        Err(self.fail(CALL, &answer))
    }

    /// The robust key sequence: `/key/info` first (a retry finds the key and
    /// returns [`Created::Existing`]), then `/key/generate`, then `/key/info`
    /// again to confirm that the proxy really wrote it. Fails permanently when
    /// the alias belongs to another key or the proxy answered 200 without
    /// writing anything.
    pub async fn ensure_key(&self, key: &NewKey<'_>) -> Result<Created, LiteLlmError> {
        const CALL: Call = Call::KeyGenerate;
        let token = hash_key(key.key.expose_secret());
        if self.token_exists(&token).await? {
            return Ok(Created::Existing);
        }
        self.generate_key(key).await?;
        if self.token_exists(&token).await? {
            return Ok(Created::New);
        }
        Err(LiteLlmError::permanent(
            CALL,
            400,
            format!(
                "the proxy did not store the key with alias {:?} (the alias may belong to another key)",
                key.key_alias
            ),
        ))
    }

    /// `POST /key/delete` by alias (the aliases orgkeeper gives are unique
    /// per member and organization). A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_key_by_alias(&self, alias: &str) -> Result<Deleted, LiteLlmError> {
        self.delete_keys(json!({ "key_aliases": [alias] })).await
    }

    /// `POST /key/delete` of one key, sent as its SHA-256 token so the key
    /// itself never travels again. A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_key(&self, key: &SecretString) -> Result<Deleted, LiteLlmError> {
        self.delete_key_by_token(&hash_key(key.expose_secret()))
            .await
    }

    /// `POST /key/delete` of one key by its hashed token (as `/key/list`
    /// returns it). A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_key_by_token(&self, token: &str) -> Result<Deleted, LiteLlmError> {
        self.delete_keys(json!({ "keys": [token] })).await
    }

    async fn delete_keys(&self, body: Value) -> Result<Deleted, LiteLlmError> {
        const CALL: Call = Call::KeyDelete;
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /v1/models` with `Authorization: Bearer <key>` (and no master
    /// key), as an application calling the LLM would: `Some(false)` only for
    /// 401/403 (the proxy refuses the key), `Some(true)` for a 2xx, `None`
    /// when the answer says nothing about the key (other errors, time-outs).
    pub async fn key_valid(&self, key: &SecretString) -> Option<bool> {
        let answer = self
            .probe
            .get(format!("{}/v1/models", self.base_url))
            .bearer_auth(key.expose_secret())
            .send()
            .await;
        match answer.map(|a| a.status()) {
            Ok(s) if s.is_success() => Some(true),
            Ok(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Some(false),
            Ok(status) => {
                tracing::debug!(status = status.as_u16(), "key check inconclusive");
                None
            }
            Err(e) => {
                tracing::debug!(error = %chain(&e), "key check inconclusive");
                None
            }
        }
    }

    /// `POST /key/update {key, key_alias}`: renames a key (by hashed token).
    /// A key that is gone means [`Deleted::AlreadyGone`] (nothing to rename).
    pub async fn rename_key(&self, token: &str, alias: &str) -> Result<Deleted, LiteLlmError> {
        const CALL: Call = Call::KeyUpdate;
        let body = json!({ "key": token, "key_alias": alias });
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /key/list?user_id=` (all pages): the user's keys as hashed tokens with their team.
    pub async fn list_user_keys(&self, user_id: &str) -> Result<Vec<ListedKey>, LiteLlmError> {
        const CALL: Call = Call::KeyList;
        let size = KEY_LIST_PAGE_SIZE.to_string();
        let mut keys = Vec::new();
        let mut page = 1usize;
        loop {
            let page_text = page.to_string();
            let answer = self
                .get(
                    CALL,
                    &[
                        ("user_id", user_id),
                        ("return_full_object", "true"),
                        ("page", &page_text),
                        ("size", &size),
                    ],
                )
                .await?;
            if !answer.is_success() {
                return Err(self.fail(CALL, &answer));
            }
            let Some(entries) = answer.json.get("keys").and_then(Value::as_array) else {
                return Err(self.fail(CALL, &answer));
            };
            for entry in entries {
                let listed = match entry {
                    Value::String(token) => ListedKey {
                        token: token.clone(),
                        team_id: None,
                        managed_by_orgkeeper: false,
                    },
                    Value::Object(o) => {
                        let Some(token) = o.get("token").and_then(Value::as_str) else {
                            return Err(LiteLlmError::permanent(
                                CALL,
                                answer.status.as_u16(),
                                "unexpected answer: a listed key has no token",
                            ));
                        };
                        ListedKey {
                            token: token.to_owned(),
                            team_id: o.get("team_id").and_then(Value::as_str).map(str::to_owned),
                            managed_by_orgkeeper: o
                                .get("metadata")
                                .and_then(|m| m.get("managed_by"))
                                .and_then(Value::as_str)
                                == Some("orgkeeper"),
                        }
                    }
                    _ => {
                        return Err(LiteLlmError::permanent(
                            CALL,
                            answer.status.as_u16(),
                            "unexpected answer: a listed key is neither a token nor an object",
                        ))
                    }
                };
                keys.push(listed);
            }
            let total_pages = answer
                .json
                .get("total_pages")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize;
            if entries.is_empty() || page >= total_pages {
                return Ok(keys);
            }
            page += 1;
        }
    }

    /// `POST /key/update {key, team_id}`: moves a key (by hashed token) into a
    /// team, or out of any team with `None`.
    pub async fn move_key_to_team(
        &self,
        token: &str,
        team_id: Option<&str>,
    ) -> Result<(), LiteLlmError> {
        const CALL: Call = Call::KeyUpdate;
        let mut body = Map::new();
        body.insert("key".into(), json!(token));
        body.insert("team_id".into(), json!(team_id));
        let answer = self.post(CALL, &Value::Object(body)).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(self.fail(CALL, &answer))
    }
}

/// A `/key/generate` 400 saying the alias is already used.
fn is_alias_taken(answer: &Answer) -> bool {
    answer.status == StatusCode::BAD_REQUEST && {
        let m = answer.message();
        m.contains("alias") && m.contains("already exists")
    }
}

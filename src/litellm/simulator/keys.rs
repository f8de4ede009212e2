//! The key endpoints: `/key/generate`, `/key/info`, `/key/list`,
//! `/key/update`, `/key/delete`.

use super::replies::{
    abbreviate, object_field, ok, opt_f64, proxy_error, random_key, str_field, string_list,
    token_of, validation_error, wrapped_error, Outcome,
};
use super::server::query_param;
use super::{Db, Key};
use crate::litellm::client::hash_key;
use serde_json::{json, Map, Value};

impl Db {
    /// `POST /key/generate`, quirks included.
    pub(super) fn key_generate(&mut self, body: &Map<String, Value>) -> Outcome {
        let key_value = match body.get("key") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(validation_error("key", "Input should be a valid string")),
        };
        if let Some(k) = &key_value {
            if !k.starts_with("sk-") {
                return Err(proxy_error(
                    400,
                    format!("Invalid key format. LiteLLM Virtual Key must start with 'sk-'. Received: {k}"),
                    "bad_request_error",
                    "key",
                ));
            }
            if k.chars().count() < 16 {
                return Err(proxy_error(
                    400,
                    "Invalid key format. A custom key must be at least 16 characters long.",
                    "bad_request_error",
                    "key",
                ));
            }
        }
        let alias = match body.get("key_alias") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => Some(a.clone()),
            Some(_) => {
                return Err(validation_error(
                    "key_alias",
                    "Input should be a valid string",
                ))
            }
        };
        if let Some(a) = &alias {
            if self.aliases.contains_key(a) {
                return Err(proxy_error(
                    400,
                    format!("Key with alias '{a}' already exists. Unique key aliases across all keys are required."),
                    "bad_request_error",
                    "key_alias",
                ));
            }
        }
        let key_value = key_value.unwrap_or_else(random_key);
        let token = hash_key(&key_value);
        if self.keys.contains_key(&token) {
            // The real proxy answers 200, writes nothing, and echoes the request.
            let mut echo = body.clone();
            echo.insert("key".into(), json!(key_value));
            return ok(Value::Object(echo));
        }
        let key = Key {
            seq: 0,
            token: token.clone(),
            key_name: abbreviate(&key_value),
            key_alias: alias,
            team_id: str_field(body, "team_id").map(str::to_owned),
            user_id: str_field(body, "user_id").map(str::to_owned),
            models: string_list(body, "models")?,
            metadata: object_field(body, "metadata")?,
            spend: 0.0,
            max_budget: opt_f64(body, "max_budget")?,
        };
        let mut out = Self::key_json(&key, true);
        out["key"] = json!(key_value);
        out["token_id"] = json!(token);
        self.insert_key(key);
        ok(out)
    }

    /// `GET /key/info?key=` (a key or its hashed token).
    pub(super) fn key_info(&self, key: Option<&str>) -> Outcome {
        let found = key.and_then(|k| self.keys.get(&token_of(k)));
        match found {
            Some(k) => ok(json!({"key": key, "info": Self::key_json(k, false)})),
            None => Err(proxy_error(
                404,
                "Key not found in database",
                "not_found_error",
                "key",
            )),
        }
    }

    /// `GET /key/list?user_id=&team_id=&key_alias=&return_full_object=&page=&size=`.
    pub(super) fn key_list(&self, query: &str) -> Outcome {
        let page = match query_param(query, "page").map(|p| p.parse::<usize>()) {
            None => 1,
            Some(Ok(p)) if p >= 1 => p,
            _ => {
                return Err(validation_error(
                    "page",
                    "Input should be greater than or equal to 1",
                ))
            }
        };
        let size = match query_param(query, "size").map(|p| p.parse::<usize>()) {
            None => 10,
            Some(Ok(s)) if (1..=100).contains(&s) => s,
            _ => {
                return Err(validation_error(
                    "size",
                    "Input should be between 1 and 100",
                ))
            }
        };
        let full = query_param(query, "return_full_object").is_some_and(|v| v == "true");
        let user_id = query_param(query, "user_id");
        let team_id = query_param(query, "team_id");
        let alias = query_param(query, "key_alias");
        let mut keys: Vec<&Key> = match (&user_id, &team_id) {
            (Some(u), _) => self
                .keys_by_user
                .get(u)
                .map(|s| self.keys_sorted(s.iter()))
                .unwrap_or_default(),
            (None, Some(t)) => self
                .keys_by_team
                .get(t)
                .map(|s| self.keys_sorted(s.iter()))
                .unwrap_or_default(),
            (None, None) => self.keys_sorted(self.keys.keys()),
        };
        keys.retain(|k| {
            team_id
                .as_ref()
                .is_none_or(|t| k.team_id.as_ref() == Some(t))
                && alias
                    .as_ref()
                    .is_none_or(|a| k.key_alias.as_ref() == Some(a))
        });
        let total = keys.len();
        let total_pages = total.div_ceil(size).max(1);
        let listed: Vec<Value> = keys
            .iter()
            .skip((page - 1) * size)
            .take(size)
            .map(|k| {
                if full {
                    Self::key_json(k, true)
                } else {
                    json!(k.token)
                }
            })
            .collect();
        ok(json!({
            "keys": listed,
            "total_count": total,
            "current_page": page,
            "total_pages": total_pages,
        }))
    }

    /// `POST /key/update {key, …}` (key or hashed token).
    pub(super) fn key_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(given) = str_field(body, "key") else {
            return Err(validation_error("key", "Field required"));
        };
        let token = token_of(given);
        let Some(existing) = self.keys.get(&token).cloned() else {
            return Err(wrapped_error(404, "Key not found in database"));
        };
        let mut key = existing;
        if body.contains_key("team_id") {
            let team_id = str_field(body, "team_id").map(str::to_owned);
            if let Some(t) = &team_id {
                if !self.teams.contains_key(t) {
                    return Err(wrapped_error(
                        404,
                        &format!(
                            "Team doesn't exist in db. Team={t}. Create team via `/team/new` call."
                        ),
                    ));
                }
            }
            key.team_id = team_id;
        }
        if body.contains_key("key_alias") {
            let alias = str_field(body, "key_alias").map(str::to_owned);
            if let Some(a) = &alias {
                if self.aliases.get(a).is_some_and(|t| t != &token) {
                    return Err(proxy_error(
                        400,
                        format!("Key with alias '{a}' already exists. Unique key aliases across all keys are required."),
                        "bad_request_error",
                        "key_alias",
                    ));
                }
            }
            key.key_alias = alias;
        }
        if body.contains_key("user_id") {
            key.user_id = str_field(body, "user_id").map(str::to_owned);
        }
        if body.contains_key("models") {
            key.models = string_list(body, "models")?;
        }
        if body.contains_key("metadata") {
            key.metadata = object_field(body, "metadata")?;
        }
        if body.contains_key("max_budget") {
            key.max_budget = opt_f64(body, "max_budget")?;
        }
        let seq = key.seq;
        self.remove_key(&token);
        self.insert_key(key);
        if let Some(k) = self.keys.get_mut(&token) {
            k.seq = seq;
        }
        let mut out = Self::key_json(&self.keys[&token], true);
        out["key"] = json!(given);
        ok(out)
    }

    /// `POST /key/delete {keys, key_aliases}`: keys by value or hashed token,
    /// and/or by alias. Deletes those that exist and answers with what was
    /// asked; 404 when none of them exists.
    pub(super) fn key_delete(&mut self, body: &Map<String, Value>) -> Outcome {
        let keys = string_list(body, "keys")?;
        let aliases = string_list(body, "key_aliases")?;
        if !body.contains_key("keys") && !body.contains_key("key_aliases") {
            return Err(validation_error(
                "keys",
                "Value error, Must provide either keys or key_aliases",
            ));
        }
        let mut tokens: Vec<String> = keys.iter().map(|k| token_of(k)).collect();
        tokens.extend(aliases.iter().filter_map(|a| self.aliases.get(a).cloned()));
        let mut deleted = 0;
        for t in &tokens {
            if self.remove_key(t).is_some() {
                deleted += 1;
            }
        }
        if deleted == 0 {
            return Err(proxy_error(
                404,
                "Authentication Error - Key not found in database",
                "not_found_error",
                "keys",
            ));
        }
        let mut asked = keys;
        asked.extend(aliases);
        ok(json!({"deleted_keys": asked}))
    }
}

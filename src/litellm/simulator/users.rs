//! The user endpoints: `/user/new`, `/user/info`, `/user/update`.

use super::replies::{
    abbreviate, object_field, ok, opt_f64, proxy_error, random_key, str_field, string_list,
    validation_error, wrapped_error, Outcome,
};
use super::{Db, Key};
use crate::litellm::client::hash_key;
use serde_json::{json, Map, Value};

impl Db {
    /// `POST /user/new`.
    pub(super) fn user_new(&mut self, body: &Map<String, Value>) -> Outcome {
        let user_id = match body.get("user_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(_) => {
                return Err(validation_error(
                    "user_id",
                    "Input should be a valid string",
                ))
            }
        };
        if self.users.contains_key(&user_id) {
            return Err(wrapped_error(
                409,
                &format!("User with id {user_id} already exists"),
            ));
        }
        let email = str_field(body, "user_email")
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        if let Some(e) = &email {
            if let Some(owner) = self.email_owner(e) {
                let existing = owner.user_email.clone().unwrap_or_default();
                return Err(wrapped_error(
                    409,
                    &format!("User with email {existing} already exists"),
                ));
            }
        }
        let mut user = Self::new_user(&user_id, email);
        user.max_budget = opt_f64(body, "max_budget")?;
        user.models = string_list(body, "models")?;
        user.metadata = object_field(body, "metadata")?;
        if let Some(role) = str_field(body, "user_role") {
            user.user_role = role.to_owned();
        }
        let auto_create_key = body
            .get("auto_create_key")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut key_value = String::new();
        if auto_create_key {
            key_value = random_key();
            let key = Key {
                seq: 0,
                token: hash_key(&key_value),
                key_name: abbreviate(&key_value),
                key_alias: str_field(body, "key_alias").map(str::to_owned),
                team_id: None,
                user_id: Some(user_id.clone()),
                models: user.models.clone(),
                metadata: json!({}),
                spend: 0.0,
                max_budget: None,
            };
            self.insert_key(key);
        }
        let mut out = Self::user_json(&user);
        out["key"] = json!(key_value);
        out["expires"] = Value::Null;
        self.insert_user(user);
        ok(out)
    }

    /// `GET /user/info?user_id=`.
    pub(super) fn user_info(&self, user_id: Option<&str>) -> Outcome {
        let Some(user_id) = user_id else {
            return Err(wrapped_error(400, "user_id is required"));
        };
        let Some(user) = self.users.get(user_id) else {
            return Err(proxy_error(
                404,
                format!("User {user_id} not found"),
                "internal_server_error",
                "None",
            ));
        };
        let keys = self.keys_json_of(&self.keys_by_user, user_id);
        let teams: Vec<Value> = user
            .teams
            .iter()
            .filter_map(|t| self.teams.get(t))
            .map(|t| self.team_json(t))
            .collect();
        ok(json!({
            "user_id": user_id,
            "user_info": Self::user_json(user),
            "keys": keys,
            "teams": teams,
        }))
    }

    /// `POST /user/update`: an upsert that does not check email uniqueness.
    pub(super) fn user_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let user_id = match (str_field(body, "user_id"), str_field(body, "user_email")) {
            (Some(uid), _) => uid.to_owned(),
            (None, Some(email)) => match self.email_owner(email) {
                Some(u) => u.user_id.clone(),
                None => uuid::Uuid::new_v4().to_string(),
            },
            (None, None) => {
                return Err(wrapped_error(
                    400,
                    "Either user_id or user_email needs to be passed in",
                ))
            }
        };
        let mut user = self
            .users
            .get(&user_id)
            .cloned()
            .unwrap_or_else(|| Self::new_user(&user_id, None));
        if body.contains_key("max_budget") {
            user.max_budget = opt_f64(body, "max_budget")?;
        }
        if let Some(email) = str_field(body, "user_email") {
            user.user_email = Some(email.to_owned());
        }
        if let Some(spend) = opt_f64(body, "spend")? {
            user.spend = spend;
        }
        if body.contains_key("models") {
            user.models = string_list(body, "models")?;
        }
        if body.contains_key("metadata") {
            user.metadata = object_field(body, "metadata")?;
        }
        if let Some(role) = str_field(body, "user_role") {
            user.user_role = role.to_owned();
        }
        let out = Self::user_json(&user);
        self.insert_user(user);
        ok(json!({"user_id": user_id, "data": out}))
    }
}

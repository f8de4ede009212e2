//! `GET /v1/models`: what a key may use.

use super::Db;
use crate::litellm::client::hash_key;
use serde_json::{json, Value};

impl Db {
    /// `GET /v1/models` for `presented` (the master key or a virtual key):
    /// the key's models, else its team's, else every model the proxy serves.
    /// `None` when the key does not exist.
    pub(super) fn models_for(&self, presented: &str, master_key: &str) -> Option<Vec<String>> {
        if presented == master_key {
            return Some(self.served_models.clone());
        }
        let key = self.keys.get(&hash_key(presented))?;
        let team_models = key
            .team_id
            .as_ref()
            .and_then(|t| self.teams.get(t))
            .map(|t| t.models.clone())
            .unwrap_or_default();
        Some(if !key.models.is_empty() {
            key.models.clone()
        } else if !team_models.is_empty() {
            team_models
        } else {
            self.served_models.clone()
        })
    }
}

/// The answer to `GET /v1/models`, OpenAI style.
pub(super) fn models_list(models: &[String]) -> Value {
    json!({
        "object": "list",
        "data": models.iter().map(|m| json!({
            "id": m, "object": "model", "created": 1_677_610_602, "owned_by": "openai",
        })).collect::<Vec<_>>(),
    })
}

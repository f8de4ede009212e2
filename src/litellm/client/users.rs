//! The user calls: create, look up, budgets.

use super::{Created, LiteLlmClient, LiteLlmError, MemberBudget, UNLIMITED_MAX_BUDGET};
use crate::litellm::Call;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A user to create (`POST /user/new`); `user_id` is the identity provider's subject.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// The user's id.
    pub user_id: &'a str,
    /// Their email, if known (dropped when another user has it).
    pub email: Option<&'a str>,
    /// Teams to put the user in at creation (the legacy shared team, if any).
    pub teams: &'a [String],
    /// Free-form metadata (OpenHands: `{version, model}`).
    pub metadata: Value,
}

impl<'a> NewUser<'a> {
    /// A user with just an id and an email.
    pub fn plain(user_id: &'a str, email: Option<&'a str>) -> Self {
        NewUser {
            user_id,
            email,
            teams: &[],
            metadata: json!({}),
        }
    }
}

/// What `GET /user/info` says about a user's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserInfo {
    /// The user's own budget; `None` when unset (unlimited).
    pub max_budget: Option<f64>,
    /// What the user has spent so far.
    pub spend: f64,
}

impl LiteLlmClient {
    /// `POST /user/new` as OpenHands sends it (`models: []`, no key, no
    /// invitation email). A 409 for the id means [`Created::Existing`]; a 409
    /// for the email (taken by another user, case-insensitively) retries
    /// once without the email.
    pub async fn create_user(&self, user: &NewUser<'_>) -> Result<Created, LiteLlmError> {
        const CALL: Call = Call::UserNew;
        let user_id = user.user_id;
        let mut email = user.email.filter(|e| !e.trim().is_empty());
        loop {
            let mut body = json!({
                "user_id": user_id,
                "models": [],
                "teams": user.teams,
                "auto_create_key": false,
                "send_invite_email": false,
                "metadata": user.metadata,
            });
            if let Some(e) = email {
                body["user_email"] = json!(e);
            }
            let answer = self.post(CALL, &body).await?;
            if answer.is_success() {
                return Ok(Created::New);
            }
            if answer.status == StatusCode::CONFLICT {
                let message = answer.message();
                let lower = message.to_ascii_lowercase();
                if lower.contains("with id") {
                    return Ok(Created::Existing);
                }
                if email.is_some() && lower.contains("email") {
                    tracing::info!(
                        user_id,
                        "LiteLLM already has a user with this email; creating the user without it"
                    );
                    email = None;
                    continue;
                }
            }
            return Err(self.fail(CALL, &answer));
        }
    }

    /// `GET /user/info?user_id=`: the user's budget and spend, `None` for an unknown user.
    pub async fn user_info(&self, user_id: &str) -> Result<Option<UserInfo>, LiteLlmError> {
        const CALL: Call = Call::UserInfo;
        let answer = self.get(CALL, &[("user_id", user_id)]).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(self.fail(CALL, &answer));
        }
        parse_user_info(&answer.json).map_err(|problem| {
            LiteLlmError::permanent(
                CALL,
                answer.status.as_u16(),
                format!("unexpected answer: {problem}"),
            )
        })
    }

    /// `POST /user/update` setting the user's own `max_budget` (the proxy
    /// creates the user if it does not exist).
    pub async fn update_user_max_budget(
        &self,
        user_id: &str,
        max_budget: f64,
    ) -> Result<(), LiteLlmError> {
        self.update_user(json!({"user_id": user_id, "max_budget": max_budget}))
            .await
    }

    /// `POST /user/update {user_id, max_budget, spend}`: gives a user back a
    /// budget and what they spent of it (migration rollback).
    pub async fn restore_user_budget(
        &self,
        user_id: &str,
        budget: MemberBudget,
    ) -> Result<(), LiteLlmError> {
        self.update_user(json!({
            "user_id": user_id,
            "max_budget": budget.max_budget.unwrap_or(UNLIMITED_MAX_BUDGET),
            "spend": budget.spend,
        }))
        .await
    }

    async fn update_user(&self, body: Value) -> Result<(), LiteLlmError> {
        const CALL: Call = Call::UserUpdate;
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(self.fail(CALL, &answer))
    }
}

/// Reads `user_info.max_budget` and `user_info.spend` from a `/user/info`
/// answer; `None` when the proxy has no user row.
fn parse_user_info(json: &Value) -> Result<Option<UserInfo>, String> {
    let info = match json.get("user_info") {
        // Older proxies answer an unknown user with a stub ({"spend": 0}) and no user row.
        Some(Value::Object(o)) if !o.contains_key("user_id") => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(Value::Null) => return Ok(None),
        _ => return Err("no user_info object".to_owned()),
    };
    let number = |field: &str| -> Result<Option<f64>, String> {
        match info.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("user_info.{field} is not a number")),
        }
    };
    Ok(Some(UserInfo {
        max_budget: number("max_budget")?,
        spend: number("spend")?.unwrap_or(0.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_reads_budget_and_spend_and_knows_unknown_users() {
        let parse = |s: &str| parse_user_info(&serde_json::from_str(s).unwrap());
        assert_eq!(
            parse(r#"{"user_info":{"user_id":"u","max_budget":25.5,"spend":3}}"#),
            Ok(Some(UserInfo {
                max_budget: Some(25.5),
                spend: 3.0
            }))
        );
        assert_eq!(
            parse(r#"{"user_info":{"user_id":"u","max_budget":null,"spend":null}}"#),
            Ok(Some(UserInfo {
                max_budget: None,
                spend: 0.0
            }))
        );
        // Older proxies: a stub for an unknown user, or null.
        assert_eq!(
            parse(r#"{"user_id":"u","user_info":{"spend":0.0},"keys":[]}"#),
            Ok(None)
        );
        assert_eq!(parse(r#"{"user_info":null}"#), Ok(None));
        assert!(parse(r#"{"user_info":{"user_id":"u","spend":"lots"}}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }
}

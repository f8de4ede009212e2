//! The team calls: create, look up, budgets, members, delete.

use super::error::truncate;
use super::{Created, Deleted, LiteLlmClient, LiteLlmError};
use crate::litellm::Call;
use crate::redact::redact_secrets;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Whose a team is, by the metadata orgkeeper writes on the teams it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamOwner {
    /// No such team.
    Absent,
    /// orgkeeper made it for this organization.
    Ours,
    /// Someone else's team (its metadata, shortened): never adopted, never deleted.
    Foreign(String),
}

/// A budget and what was spent of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberBudget {
    /// The budget in USD; `None` = unlimited.
    pub max_budget: Option<f64>,
    /// What was spent.
    pub spend: f64,
}

/// What `GET /team/info` says about a team.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamInfo {
    /// The team's metadata, as given at creation.
    pub metadata: Value,
    /// The user ids of its members.
    pub members: Vec<String>,
    /// Each member's budget in the team (`max_budget_in_team`) and spend.
    pub budgets: Vec<(String, MemberBudget)>,
    /// The team's own budget and spend.
    pub team_budget: MemberBudget,
}

impl TeamInfo {
    /// Whose the team is: [`TeamOwner::Ours`] when its metadata carries the
    /// same `managed_by` and `org_id` as `ours` (the metadata orgkeeper
    /// writes on its teams).
    pub fn owner(&self, ours: &Value) -> TeamOwner {
        let same = |field: &str| {
            ours.get(field)
                .is_some_and(|v| !v.is_null() && self.metadata.get(field) == Some(v))
        };
        if same("managed_by") && same("org_id") {
            TeamOwner::Ours
        } else {
            TeamOwner::Foreign(redact_secrets(&truncate(&self.metadata.to_string(), 200)))
        }
    }

    /// A member's budget in the team, else the team's own.
    pub fn budget_of(&self, user_id: &str) -> MemberBudget {
        self.budgets
            .iter()
            .find(|(u, _)| u == user_id)
            .map(|(_, b)| *b)
            .unwrap_or(self.team_budget)
    }
}

/// A team to create (`POST /team/new`); `team_id` is the organization's UUID.
#[derive(Debug, Clone)]
pub struct NewTeam<'a> {
    /// Caller-chosen team id (the org id), which makes retries detectable.
    pub team_id: &'a str,
    /// Display name (the org's name); the proxy allows duplicates.
    pub team_alias: &'a str,
    /// Team budget in USD; `None` means unlimited (the field is omitted).
    pub max_budget: Option<f64>,
    /// Models the team may use (empty = all).
    pub models: &'a [String],
    /// Free-form metadata stored on the team.
    pub metadata: Value,
}

impl LiteLlmClient {
    /// `POST /team/new`. A 400 "already exists" is confirmed with
    /// `GET /team/info` and reported as [`Created::Existing`].
    pub async fn create_team(&self, team: &NewTeam<'_>) -> Result<Created, LiteLlmError> {
        const CALL: Call = Call::TeamNew;
        let mut body = json!({
            "team_id": team.team_id,
            "team_alias": team.team_alias,
            "models": team.models,
            "spend": 0,
            "metadata": team.metadata,
        });
        if let Some(budget) = team.max_budget {
            body["max_budget"] = json!(budget);
        }
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Created::New);
        }
        if answer.status == StatusCode::BAD_REQUEST && answer.message().contains("already exists") {
            return match self.team_owner(team.team_id, &team.metadata).await? {
                TeamOwner::Ours => Ok(Created::Existing),
                TeamOwner::Foreign(metadata) => Err(LiteLlmError::permanent(
                    CALL,
                    400,
                    format!(
                        "LiteLLM team {} already exists and is not this organization's \
                         (its metadata is {metadata}); orgkeeper neither adopts nor deletes a foreign team",
                        team.team_id
                    ),
                )),
                TeamOwner::Absent => Err(LiteLlmError::permanent(
                    CALL,
                    400,
                    format!(
                        "the proxy says team {} already exists but /team/info cannot find it: {}",
                        team.team_id,
                        self.describe(&answer)
                    ),
                )),
            };
        }
        Err(self.fail(CALL, &answer))
    }

    /// `GET /team/info?team_id=`: whether the team exists and whether it is
    /// the one orgkeeper made for this organization (see [`TeamInfo::owner`]).
    pub async fn team_owner(&self, team_id: &str, ours: &Value) -> Result<TeamOwner, LiteLlmError> {
        Ok(match self.team_info(team_id).await? {
            None => TeamOwner::Absent,
            Some(info) => info.owner(ours),
        })
    }

    /// `GET /team/info?team_id=`: the team's metadata, members and budgets;
    /// `None` when there is no such team.
    pub async fn team_info(&self, team_id: &str) -> Result<Option<TeamInfo>, LiteLlmError> {
        const CALL: Call = Call::TeamInfo;
        let answer = self.get(CALL, &[("team_id", team_id)]).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(self.fail(CALL, &answer));
        }
        let info = &answer.json["team_info"];
        let members = info["members_with_roles"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["user_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let budgets = answer.json["team_memberships"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| {
                        Some((
                            m["user_id"].as_str()?.to_owned(),
                            MemberBudget {
                                max_budget: m["litellm_budget_table"]["max_budget"].as_f64(),
                                spend: m["spend"].as_f64().unwrap_or(0.0),
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(TeamInfo {
            metadata: info["metadata"].clone(),
            members,
            budgets,
            team_budget: MemberBudget {
                max_budget: info["max_budget"].as_f64(),
                spend: info["spend"].as_f64().unwrap_or(0.0),
            },
        }))
    }

    /// `POST /team/member_add` with role `user`. A 400 of type
    /// `team_member_already_in_team` means [`Created::Existing`].
    pub async fn add_team_member(
        &self,
        team_id: &str,
        user_id: &str,
        max_budget_in_team: Option<f64>,
    ) -> Result<Created, LiteLlmError> {
        const CALL: Call = Call::TeamMemberAdd;
        let mut body = json!({
            "team_id": team_id,
            "member": {"user_id": user_id, "role": "user"},
        });
        if let Some(budget) = max_budget_in_team {
            body["max_budget_in_team"] = json!(budget);
        }
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Created::New);
        }
        if answer.status == StatusCode::BAD_REQUEST
            && (answer.error_type() == Some("team_member_already_in_team")
                || answer.message().contains("already in team"))
        {
            return Ok(Created::Existing);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/member_delete`. A member (or team) that is not there means
    /// [`Deleted::AlreadyGone`].
    pub async fn remove_team_member(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<Deleted, LiteLlmError> {
        const CALL: Call = Call::TeamMemberDelete;
        let body = json!({"team_id": team_id, "user_id": user_id});
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        if answer.status == StatusCode::BAD_REQUEST {
            let m = answer.message().to_ascii_lowercase();
            if m.contains("not found in team")
                || m.contains("not in team")
                || m.contains("does not exist")
                || m.contains("not found")
            {
                return Ok(Deleted::AlreadyGone);
            }
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/update {team_id, max_budget}`: the team's budget (a
    /// top-up); `None` = unlimited.
    pub async fn update_team_budget(
        &self,
        team_id: &str,
        max_budget: Option<f64>,
    ) -> Result<(), LiteLlmError> {
        const CALL: Call = Call::TeamUpdate;
        let body = json!({ "team_id": team_id, "max_budget": max_budget });
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(());
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/member_update {team_id, user_id, max_budget_in_team}`.
    /// A user who is no longer in the team means [`Deleted::AlreadyGone`].
    pub async fn update_member_budget(
        &self,
        team_id: &str,
        user_id: &str,
        max_budget_in_team: Option<f64>,
    ) -> Result<Deleted, LiteLlmError> {
        const CALL: Call = Call::TeamMemberUpdate;
        let body = json!({
            "team_id": team_id,
            "user_id": user_id,
            "max_budget_in_team": max_budget_in_team,
        });
        let answer = self.post(CALL, &body).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::BAD_REQUEST
            && answer
                .message()
                .to_ascii_lowercase()
                .contains("not in team")
        {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }

    /// `POST /team/delete`; the proxy also deletes the team's keys and
    /// memberships. A 404 means [`Deleted::AlreadyGone`].
    pub async fn delete_team(&self, team_id: &str) -> Result<Deleted, LiteLlmError> {
        const CALL: Call = Call::TeamDelete;
        let answer = self.post(CALL, &json!({"team_ids": [team_id]})).await?;
        if answer.is_success() {
            return Ok(Deleted::Deleted);
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Deleted::AlreadyGone);
        }
        Err(self.fail(CALL, &answer))
    }
}

//! The team endpoints: `/team/new`, `/team/info`, `/team/update`,
//! `/team/delete` and the member endpoints.

use super::replies::{
    detail_error, object_field, ok, opt_f64, proxy_error, str_field, string_list, validation_error,
    wrapped_error, Outcome,
};
use super::{Db, Member, Team, CALLER_ADMIN_USER_ID, NOT_PREMIUM};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

impl Db {
    /// `POST /team/new`.
    pub(super) fn team_new(&mut self, body: &Map<String, Value>) -> Outcome {
        let team_id = match body.get("team_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(validation_error(
                    "team_id",
                    "Input should be a valid string",
                ))
            }
        };
        if self.teams.contains_key(&team_id) {
            return Err(wrapped_error(
                400,
                &format!("Team id = {team_id} already exists. Please use a different team id."),
            ));
        }
        let mut members = Vec::new();
        if let Some(Value::Array(given)) = body.get("members_with_roles") {
            for m in given {
                let user_id = m.get("user_id").and_then(Value::as_str).map(str::to_owned);
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                if !matches!(role, "user" | "admin") {
                    return Err(validation_error(
                        "members_with_roles",
                        "role must be 'admin' or 'user'",
                    ));
                }
                members.push(Member {
                    user_id,
                    user_email: m
                        .get("user_email")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    role: role.to_owned(),
                });
            }
        }
        if !members
            .iter()
            .any(|m| m.user_id.as_deref() == Some(CALLER_ADMIN_USER_ID))
        {
            members.push(Member {
                user_id: Some(CALLER_ADMIN_USER_ID.into()),
                user_email: None,
                role: "admin".into(),
            });
        }
        let team = Team {
            team_id: team_id.clone(),
            team_alias: str_field(body, "team_alias").map(str::to_owned),
            max_budget: opt_f64(body, "max_budget")?,
            models: string_list(body, "models")?,
            metadata: object_field(body, "metadata")?,
            members,
            budgets: HashMap::new(),
            spend: 0.0,
        };
        // The proxy pushes the team onto every listed member's user row (upsert).
        for m in &team.members {
            let Some(uid) = m.user_id.as_deref() else {
                continue;
            };
            if uid == CALLER_ADMIN_USER_ID {
                continue;
            }
            if !self.users.contains_key(uid) {
                self.insert_user(Self::new_user(uid, None));
            }
            if let Some(u) = self.users.get_mut(uid) {
                if !u.teams.contains(&team_id) {
                    u.teams.push(team_id.clone());
                }
            }
        }
        let out = self.team_json(&team);
        self.teams.insert(team_id, team);
        ok(out)
    }

    /// `GET /team/info?team_id=`.
    pub(super) fn team_info(&self, team_id: Option<&str>) -> Outcome {
        let Some(team_id) = team_id else {
            return Err(wrapped_error(400, "No team id passed in."));
        };
        let Some(team) = self.teams.get(team_id) else {
            return Err(proxy_error(
                404,
                format!("{{'message': 'Team not found, passed team id: {team_id}.'}}"),
                "internal_server_error",
                "None",
            ));
        };
        let keys = self.keys_json_of(&self.keys_by_team, team_id);
        let memberships: Vec<Value> = team
            .budgets
            .iter()
            .map(|(uid, budget)| {
                json!({
                    "team_id": team.team_id, "user_id": uid, "spend": 0.0,
                    "budget_id": format!("budget-{}-{uid}", team.team_id),
                    "litellm_budget_table": {"max_budget": budget},
                })
            })
            .collect();
        ok(json!({
            "team_id": team_id,
            "team_info": self.team_json(team),
            "keys": keys,
            "team_memberships": memberships,
        }))
    }

    /// `POST /team/delete {team_ids}`: cascades to keys and memberships; users remain.
    pub(super) fn team_delete(&mut self, body: &Map<String, Value>) -> Outcome {
        let ids = match body.get("team_ids") {
            Some(Value::Array(_)) => string_list(body, "team_ids")?,
            _ => return Err(validation_error("team_ids", "Field required")),
        };
        if let Some(missing) = ids.iter().find(|id| !self.teams.contains_key(*id)) {
            return Err(detail_error(
                404,
                format!("Team not found, passed team_id={missing}"),
            ));
        }
        let mut deleted = Vec::new();
        for id in &ids {
            let Some(team) = self.teams.remove(id) else {
                continue;
            };
            let tokens: Vec<String> = self
                .keys_by_team
                .get(id)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for t in tokens {
                self.remove_key(&t);
            }
            for m in &team.members {
                if let Some(u) = m.user_id.as_deref().and_then(|uid| self.users.get_mut(uid)) {
                    u.teams.retain(|t| t != id);
                }
            }
            deleted.push(self.team_json(&team));
        }
        ok(json!({"deleted_teams": deleted}))
    }

    /// `POST /team/update {team_id, max_budget, …}`: a top-up; 404 for an unknown team.
    pub(super) fn team_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(validation_error("team_id", "Field required"));
        };
        let max_budget = opt_f64(body, "max_budget")?;
        let Some(team) = self.teams.get_mut(&team_id) else {
            return Err(detail_error(
                404,
                format!("Team not found, passed team_id={team_id}"),
            ));
        };
        if body.contains_key("max_budget") {
            team.max_budget = max_budget;
        }
        if body.contains_key("metadata") {
            team.metadata = object_field(body, "metadata")?;
        }
        let out = self.team_json(&self.teams[&team_id]);
        ok(json!({"team_id": team_id, "data": out}))
    }

    /// `POST /team/member_update {team_id, user_id, max_budget_in_team}`:
    /// 404 for an unknown team, 400 for a user who is not a member.
    pub(super) fn member_update(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(validation_error("team_id", "Field required"));
        };
        let Some(user_id) = str_field(body, "user_id").map(str::to_owned) else {
            return Err(detail_error(
                400,
                "user_id or user_email needs to be passed in",
            ));
        };
        let budget = opt_f64(body, "max_budget_in_team")?;
        let Some(team) = self.teams.get_mut(&team_id) else {
            return Err(detail_error(
                404,
                format!("Team not found for team_id={team_id}"),
            ));
        };
        if !team
            .members
            .iter()
            .any(|m| m.user_id.as_deref() == Some(&user_id))
        {
            return Err(detail_error(
                400,
                format!("User {user_id} not in team {team_id}"),
            ));
        }
        match budget {
            Some(b) => team.budgets.insert(user_id.clone(), b),
            None => team.budgets.remove(&user_id),
        };
        ok(json!({"team_id": team_id, "user_id": user_id, "max_budget_in_team": budget}))
    }

    /// `POST /team/member_add`.
    pub(super) fn member_add(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(validation_error("team_id", "Field required"));
        };
        let members: Vec<&Map<String, Value>> = match body.get("member") {
            Some(Value::Object(m)) => vec![m],
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for m in list {
                    match m.as_object() {
                        Some(o) => out.push(o),
                        None => {
                            return Err(validation_error(
                                "member",
                                "Input should be a valid dictionary",
                            ))
                        }
                    }
                }
                out
            }
            _ => return Err(validation_error("member", "Field required")),
        };
        let budget = opt_f64(body, "max_budget_in_team")?;
        let mut parsed = Vec::new();
        for m in &members {
            let role = match str_field(m, "role") {
                Some(r @ ("user" | "admin")) => r,
                Some(_) => {
                    return Err(validation_error("member", "role must be 'admin' or 'user'"))
                }
                None => return Err(validation_error("member", "Field required: role")),
            };
            let user_id = str_field(m, "user_id").map(str::to_owned);
            let user_email = str_field(m, "user_email").map(str::to_owned);
            if user_id.is_none() && user_email.is_none() {
                return Err(validation_error(
                    "member",
                    "Either user_id or user_email must be provided",
                ));
            }
            parsed.push(Member {
                user_id,
                user_email,
                role: role.to_owned(),
            });
        }
        if parsed.iter().any(|m| m.role == "admin") {
            return Err(detail_error(400, NOT_PREMIUM));
        }
        let Some(team) = self.teams.get(&team_id) else {
            return Err(detail_error(
                404,
                format!("Team not found for team_id={team_id}"),
            ));
        };
        for m in &parsed {
            let already = team.members.iter().any(|e| {
                (m.user_id.is_some() && e.user_id == m.user_id)
                    || (m.user_id.is_none()
                        && m.user_email.is_some()
                        && e.user_email == m.user_email)
            });
            if already {
                let who = m
                    .user_id
                    .clone()
                    .or_else(|| m.user_email.clone())
                    .unwrap_or_default();
                let existing: Vec<String> = team
                    .members
                    .iter()
                    .map(|e| {
                        format!(
                            "Member(user_id='{}', user_email={}, role='{}')",
                            e.user_id.as_deref().unwrap_or("None"),
                            e.user_email
                                .as_deref()
                                .map_or("None".into(), |x| format!("'{x}'")),
                            e.role
                        )
                    })
                    .collect();
                return Err(proxy_error(
                    400,
                    format!(
                        "User={who} already in team. Existing members=[{}]",
                        existing.join(", ")
                    ),
                    "team_member_already_in_team",
                    "member",
                ));
            }
        }
        let mut updated_users = Vec::new();
        let mut updated_memberships = Vec::new();
        for mut m in parsed {
            // Find or create the user (by id, else by email).
            let uid = match &m.user_id {
                Some(uid) => {
                    if !self.users.contains_key(uid) {
                        self.insert_user(Self::new_user(uid, m.user_email.clone()));
                    }
                    uid.clone()
                }
                None => {
                    let email = m.user_email.clone().unwrap_or_default();
                    match self.email_owner(&email) {
                        Some(u) => u.user_id.clone(),
                        None => {
                            let uid = uuid::Uuid::new_v4().to_string();
                            self.insert_user(Self::new_user(&uid, Some(email)));
                            uid
                        }
                    }
                }
            };
            m.user_id = Some(uid.clone());
            if let Some(u) = self.users.get_mut(&uid) {
                if !u.teams.contains(&team_id) {
                    u.teams.push(team_id.clone());
                }
                updated_users.push(Self::user_json(u));
            }
            let team = self.teams.get_mut(&team_id).expect("checked above");
            if let Some(b) = budget {
                team.budgets.insert(uid.clone(), b);
                updated_memberships.push(json!({
                    "team_id": team_id, "user_id": uid, "spend": 0.0,
                    "budget_id": format!("budget-{team_id}-{uid}"),
                    "litellm_budget_table": {"max_budget": b},
                }));
            }
            team.members.push(m);
        }
        let team = &self.teams[&team_id];
        let mut out = self.team_json(team);
        out["updated_users"] = json!(updated_users);
        out["updated_team_memberships"] = json!(updated_memberships);
        ok(out)
    }

    /// `POST /team/member_delete`.
    pub(super) fn member_delete(&mut self, body: &Map<String, Value>) -> Outcome {
        let Some(team_id) = str_field(body, "team_id").map(str::to_owned) else {
            return Err(detail_error(400, "No team id passed in"));
        };
        let user_id = str_field(body, "user_id").map(str::to_owned);
        let user_email = str_field(body, "user_email").map(str::to_owned);
        if user_id.is_none() && user_email.is_none() {
            return Err(detail_error(
                400,
                "Either user_id or user_email needs to be passed in",
            ));
        }
        let Some(team) = self.teams.get_mut(&team_id) else {
            // The real proxy answers 404 for an unknown team, as `/team/member_add` does.
            return Err(detail_error(
                404,
                format!("Team not found for team_id={team_id}"),
            ));
        };
        let before = team.members.len();
        let mut removed_ids = Vec::new();
        team.members.retain(|m| {
            let hit = (user_id.is_some() && m.user_id == user_id)
                || (user_email.is_some() && m.user_email.is_some() && m.user_email == user_email);
            if hit {
                if let Some(uid) = &m.user_id {
                    removed_ids.push(uid.clone());
                }
            }
            !hit
        });
        if team.members.len() == before {
            let who = user_id.or(user_email).unwrap_or_default();
            return Err(detail_error(
                400,
                format!("User {who} not in team {team_id}"),
            ));
        }
        for uid in &removed_ids {
            team.budgets.remove(uid);
        }
        let out = self.team_json(&self.teams[&team_id]);
        for uid in &removed_ids {
            if let Some(u) = self.users.get_mut(uid) {
                u.teams.retain(|t| t != &team_id);
            }
        }
        ok(out)
    }
}

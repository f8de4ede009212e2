//! What tests see of the simulator: counts, and views of teams, users and keys.

use super::replies::{abbreviate, token_of};
use super::{Db, Key, LiteLlmSimulator, CALLER_ADMIN_USER_ID};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

// ---------------------------------------------------------------------------
// Views for tests
// ---------------------------------------------------------------------------

/// Counts of what the simulator holds, and of the requests it answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// Teams.
    pub teams: usize,
    /// Users (the master-key caller is not one).
    pub users: usize,
    /// Team memberships, not counting the caller admin `/team/new` adds.
    pub memberships: usize,
    /// Keys.
    pub keys: usize,
    /// Requests per endpoint (`team/new`, …, `other`) and answer status;
    /// status 0 counts connections closed without an answer.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
}

impl SimStats {
    /// All requests received.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().flat_map(|m| m.values()).sum()
    }

    /// Requests received by one endpoint (`key/generate`), whatever the answer.
    pub fn calls(&self, endpoint: &str) -> u64 {
        self.requests
            .get(endpoint.trim_start_matches('/'))
            .map_or(0, |m| m.values().sum())
    }

    /// Requests answered with `status`, all endpoints together (0 = dropped).
    pub fn status_count(&self, status: u16) -> u64 {
        self.requests.values().filter_map(|m| m.get(&status)).sum()
    }

    /// Requests to `endpoint` answered with a 2xx.
    pub fn succeeded(&self, endpoint: &str) -> u64 {
        self.requests
            .get(endpoint.trim_start_matches('/'))
            .map_or(0, |m| {
                m.iter()
                    .filter(|(s, _)| (200..300).contains(*s))
                    .map(|(_, n)| n)
                    .sum()
            })
    }

    /// Requests to `endpoint` answered with `status`.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint.trim_start_matches('/'))
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }
}

/// A team member as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamMemberView {
    /// The member's user id.
    pub user_id: String,
    /// `user` or `admin`.
    pub role: String,
    /// The member's budget within the team, if one was set.
    pub max_budget_in_team: Option<f64>,
}

/// A key as a test sees it (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyView {
    /// SHA-256 token of the key.
    pub token: String,
    /// The key's alias.
    pub alias: Option<String>,
    /// The key's user.
    pub user_id: Option<String>,
    /// The key's team.
    pub team_id: Option<String>,
    /// Models the key may use.
    pub models: Vec<String>,
    /// The key's metadata.
    pub metadata: Value,
}

/// A team as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamView {
    /// Team id.
    pub team_id: String,
    /// Team alias.
    pub team_alias: Option<String>,
    /// Team budget (`None` = unlimited).
    pub max_budget: Option<f64>,
    /// Models the team may use.
    pub models: Vec<String>,
    /// Team metadata.
    pub metadata: Value,
    /// Members, without the caller admin `/team/new` adds.
    pub members: Vec<TeamMemberView>,
    /// Whether the master-key caller (`default_user_id`) is an admin of the team.
    pub caller_admin: bool,
    /// Keys whose `team_id` is this team.
    pub keys: Vec<KeyView>,
}

/// A user as a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    /// User id.
    pub user_id: String,
    /// Email, as stored.
    pub email: Option<String>,
    /// The user's own budget (`None` = unlimited).
    pub max_budget: Option<f64>,
    /// What the user spent.
    pub spend: f64,
    /// Team ids in the user's team list.
    pub teams: Vec<String>,
    /// Number of keys whose `user_id` is this user.
    pub keys: usize,
}

impl LiteLlmSimulator {
    /// What the simulator holds and how many requests it answered.
    pub fn stats(&self) -> SimStats {
        let (teams, users, memberships, keys) = {
            let db = self.shared.db();
            (
                db.teams.len(),
                db.users.len(),
                db.memberships(),
                db.keys.len(),
            )
        };
        let mut requests: BTreeMap<String, BTreeMap<u16, u64>> = BTreeMap::new();
        for ((endpoint, status), n) in self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            *requests
                .entry((*endpoint).to_owned())
                .or_default()
                .entry(*status)
                .or_default() += n;
        }
        SimStats {
            teams,
            users,
            memberships,
            keys,
            requests,
        }
    }

    /// One team, with its members (without the caller admin) and keys.
    pub fn team(&self, team_id: &str) -> Option<TeamView> {
        let db = self.shared.db();
        let t = db.teams.get(team_id)?;
        let members = t
            .members
            .iter()
            .filter(|m| m.user_id.as_deref() != Some(CALLER_ADMIN_USER_ID))
            .map(|m| {
                let user_id = m.user_id.clone().unwrap_or_default();
                TeamMemberView {
                    max_budget_in_team: t.budgets.get(&user_id).copied(),
                    user_id,
                    role: m.role.clone(),
                }
            })
            .collect();
        let keys = db
            .keys_by_team
            .get(team_id)
            .map(|s| db.keys_sorted(s.iter()).into_iter().map(key_view).collect())
            .unwrap_or_default();
        Some(TeamView {
            team_id: t.team_id.clone(),
            team_alias: t.team_alias.clone(),
            max_budget: t.max_budget,
            models: t.models.clone(),
            metadata: t.metadata.clone(),
            caller_admin: t
                .members
                .iter()
                .any(|m| m.user_id.as_deref() == Some(CALLER_ADMIN_USER_ID) && m.role == "admin"),
            members,
            keys,
        })
    }

    /// One user.
    pub fn user(&self, user_id: &str) -> Option<UserView> {
        let db = self.shared.db();
        let u = db.users.get(user_id)?;
        Some(UserView {
            user_id: u.user_id.clone(),
            email: u.user_email.clone(),
            max_budget: u.max_budget,
            spend: u.spend,
            teams: u.teams.clone(),
            keys: db.keys_by_user.get(user_id).map_or(0, HashSet::len),
        })
    }

    /// One key, looked up by its value or its hashed token.
    pub fn key(&self, key_or_token: &str) -> Option<KeyView> {
        let db = self.shared.db();
        db.keys.get(&token_of(key_or_token)).map(key_view)
    }

    /// Whether the proxy holds this key (by value or hashed token).
    pub fn has_key(&self, key_or_token: &str) -> bool {
        self.shared.db().keys.contains_key(&token_of(key_or_token))
    }

    /// The keys of a user, oldest first.
    pub fn user_keys(&self, user_id: &str) -> Vec<KeyView> {
        let db = self.shared.db();
        db.keys_by_user
            .get(user_id)
            .map(|s| db.keys_sorted(s.iter()).into_iter().map(key_view).collect())
            .unwrap_or_default()
    }

    /// Forgets a user (as if the proxy never had them); their keys stay.
    pub fn delete_user(&self, user_id: &str) {
        let mut db = self.shared.db();
        if let Some(user) = db.users.remove(user_id) {
            db.remove_email(&user.user_email);
        }
    }

    /// Adds a legacy (pre-organization) user with personal keys (no team,
    /// no alias), for migration tests. Replaces a user with the same id.
    pub fn seed_user(
        &self,
        user_id: &str,
        email: Option<&str>,
        max_budget: Option<f64>,
        spend: f64,
        keys: &[&str],
    ) {
        let mut db = self.shared.db();
        let mut user = Db::new_user(user_id, email.map(str::to_owned));
        if let Some(old) = db.users.get(user_id) {
            user.teams = old.teams.clone();
        }
        user.max_budget = max_budget;
        user.spend = spend;
        db.insert_user(user);
        for key in keys {
            let token = token_of(key);
            db.remove_key(&token);
            db.insert_key(Key {
                seq: 0,
                token,
                key_name: abbreviate(key),
                key_alias: None,
                team_id: None,
                user_id: Some(user_id.to_owned()),
                models: Vec::new(),
                metadata: json!({}),
                spend: 0.0,
                max_budget: None,
            });
        }
    }
}

fn key_view(k: &Key) -> KeyView {
    KeyView {
        token: k.token.clone(),
        alias: k.key_alias.clone(),
        user_id: k.user_id.clone(),
        team_id: k.team_id.clone(),
        models: k.models.clone(),
        metadata: k.metadata.clone(),
    }
}

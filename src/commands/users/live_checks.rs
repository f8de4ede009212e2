//! `orgkeeper users verify <id> --live`: checks a migrated user against the
//! services themselves, not only against what the database recorded —
//! LiteLLM (the user is unlimited, the personal team exists with the
//! credits, the user is its member, the member's key is in it and works)
//! and Stripe (each customer points at the org and no longer at the user).

use crate::litellm::{LiteLlmClient, UNLIMITED_MAX_BUDGET};
use crate::secrets::{Keyring, Place};
use crate::stripe::StripeClient;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// One check: name, whether it passed, and what is wrong (or right).
pub type Check = (String, bool, String);

/// The live checks of `user`'s migration into the personal org (id = user).
pub async fn run(
    pool: &PgPool,
    litellm: &LiteLlmClient,
    stripe: Option<&StripeClient>,
    keyring: &Keyring,
    user: Uuid,
) -> anyhow::Result<Vec<Check>> {
    let org = user;
    let id = user.to_string();
    let mut checks = Vec::new();
    let mut add =
        |name: &str, ok: bool, detail: String| checks.push((name.to_string(), ok, detail));

    match litellm.user_info(&id).await? {
        None => add(
            "live_litellm_user_unlimited",
            false,
            format!("LiteLLM has no user {id}"),
        ),
        Some(info) => add(
            "live_litellm_user_unlimited",
            info.max_budget.is_none_or(|b| b == UNLIMITED_MAX_BUDGET),
            format!("user max_budget at LiteLLM is {:?}", info.max_budget),
        ),
    }

    let credits: Option<Value> = sqlx::query_scalar(
        "SELECT result -> 'credits' FROM orgkeeper.pending_external_actions
          WHERE org_id = $1 AND kind = 'litellm.migrate_user' AND status = 'done'
          ORDER BY id DESC LIMIT 1",
    )
    .bind(org)
    .fetch_optional(pool)
    .await?;
    let team_id: String = sqlx::query_scalar(
        "SELECT coalesce(litellm_team_id, id::text) FROM orgkeeper.org WHERE id = $1",
    )
    .bind(org)
    .fetch_optional(pool)
    .await?
    .unwrap_or_else(|| id.clone());
    match litellm.team_info(&team_id).await? {
        None => {
            add(
                "live_litellm_team",
                false,
                format!("team {team_id} does not exist at LiteLLM"),
            );
            add(
                "live_litellm_user_in_team",
                false,
                format!("team {team_id} does not exist"),
            );
        }
        Some(team) => {
            let expected = credits.as_ref().and_then(Value::as_f64);
            add(
                "live_litellm_team",
                credits.is_none() || team.team_budget.max_budget == expected,
                format!(
                    "team {team_id} has max_budget {:?}; the migration credited {:?}",
                    team.team_budget.max_budget, expected
                ),
            );
            add(
                "live_litellm_user_in_team",
                team.members.contains(&id),
                if team.members.contains(&id) {
                    format!("user is a member of team {team_id}")
                } else {
                    format!("user is not a member of team {team_id}")
                },
            );
        }
    }

    let stored: Option<String> = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
    )
    .bind(org)
    .fetch_optional(pool)
    .await?
    .flatten();
    let (ok, detail) = match stored {
        None => (false, "the member has no key".to_string()),
        Some(ct) => match keyring.decrypt(&Place::member_key(org, user), &ct) {
            Err(e) => (false, format!("the member's key cannot be decrypted: {e}")),
            Ok(key) => match litellm.key_team(&key).await? {
                None => (false, "the member's key is not at LiteLLM".to_string()),
                Some(team) if team.as_deref() != Some(team_id.as_str()) => {
                    (false, format!("the member's key is in team {team:?}, not {team_id}"))
                }
                Some(_) => match litellm.key_valid(&key).await {
                    Some(false) => (false, "the proxy refuses the member's key (401/403)".to_string()),
                    Some(true) => (true, format!("the member's key is in team {team_id} and works")),
                    None => (true, format!("the member's key is in team {team_id}; the check of its use was inconclusive")),
                },
            },
        },
    };
    add("live_litellm_member_key", ok, detail);

    let customers: Vec<String> = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM orgkeeper.stripe_customers WHERE org_id = $1 ORDER BY id",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    for customer in customers {
        let name = format!("live_stripe_customer {customer}");
        let Some(stripe) = stripe else {
            add(
                &name,
                false,
                "STRIPE_API_KEY is not set: cannot ask Stripe".into(),
            );
            continue;
        };
        match stripe.get_customer(&customer).await? {
            None => add(&name, false, "Stripe has no such customer".into()),
            Some(c) => {
                let org_tag = c.metadata.get("org_id").map(String::as_str);
                let user_tag = c.metadata.get("user_id").filter(|v| !v.is_empty());
                add(
                    &name,
                    org_tag == Some(id.as_str()) && user_tag.is_none(),
                    format!("metadata org_id = {org_tag:?}, user_id = {user_tag:?}"),
                );
            }
        }
    }
    Ok(checks)
}

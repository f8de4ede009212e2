//! The one generator of legacy (pre-organization) data, written as an
//! OpenHands deployment stores it. `orgkeeper bench migrate` uses it for
//! 100,000 users; tests use it with a few dozen.
//!
//! Users are numbered; user `g` gets the id `md5('orgkeeper-bench-user:' || g)`
//! and rows that depend only on `g`, inserted set-based (one statement per
//! table), so generation runs at the database's speed. Per user:
//!
//! * `user_settings`: settings versions 1–5; billing margins NULL, 0, 1 and
//!   2; the default model and base URL (NULL or spelled out) or custom ones;
//!   some users without an email; credentials as OpenHands writes them —
//!   base64-wrapped Fernet tokens under the deployment's `jwt_secret`, some
//!   plaintext (older rows), some missing — in `llm_api_key`,
//!   `llm_api_key_for_byor`, `search_api_key` and `sandbox_api_key`;
//! * 0–12 conversations (6 on average), a Stripe customer for half of the
//!   users, 2 Slack users, 2 Slack conversations, 3 API keys, 2 custom
//!   secrets (tokens or plaintext), 2 billing sessions (a completed one for
//!   a third of the users), 2 repositories, a GitLab webhook (its secret a
//!   token, a plaintext or missing), and an org-less
//!   `conversation_metadata_saas` row for a quarter of the users.
//!
//! The database cannot encrypt, and encrypting millions of values would
//! measure this process, so a fixed pool of real tokens ([`LegacyValues`])
//! is reused across users. [`litellm_account`] gives each user's LiteLLM
//! budget and spend (NULL, 0, positive, the 1e9 "unlimited" sentinel) and
//! [`seed_simulators`] puts them and the Stripe customers into the
//! simulators.

use crate::legacy_secrets::LegacyKey;
use crate::litellm::LiteLlmSimulator;
use crate::stripe::StripeSimulator;
use anyhow::Context;
use indicatif::ProgressBar;
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

/// The user id of generated user `g` (an SQL expression over `g`).
pub const USER_ID_SQL: &str = "md5('orgkeeper-bench-user:' || g)::uuid";

/// The real legacy values the generated rows draw from: Fernet tokens made
/// for one `jwt_secret`, and plaintext credentials.
#[derive(Clone)]
pub struct LegacyValues {
    tokens: Vec<String>,
    plaintexts: Vec<String>,
}

impl LegacyValues {
    /// A pool of 16 tokens under `jwt_secret` (OpenHands' format) and 4
    /// plaintext credentials.
    pub fn new(jwt_secret: &SecretString) -> Self {
        let key = LegacyKey::from_jwt_secret(jwt_secret);
        LegacyValues {
            tokens: (0..16)
                .map(|i| key.encrypt(&SecretString::from(format!("sk-legacy-secret-{i:04}"))))
                .collect(),
            plaintexts: (0..4)
                .map(|i| format!("sk-legacy-plaintext-{i:04}"))
                .collect(),
        }
    }
}

/// A generated user.
#[derive(Debug, Clone)]
pub struct LegacyUser {
    /// Its number.
    pub number: u32,
    /// Its id.
    pub user_id: Uuid,
    /// Its email, if it has one.
    pub email: Option<String>,
}

/// Generated user `number`'s LiteLLM account: `(max_budget, spend)`. Budgets
/// cycle through NULL (already unlimited), 0, positive ones (some overspent)
/// and the 1e9 sentinel, each with some spend.
pub fn litellm_account(number: u32) -> (Option<f64>, f64) {
    let spend = f64::from(number % 9) * 1.25;
    match number % 6 {
        0 => (None, spend),
        1 => (Some(0.0), 0.0),
        2 => (Some(1_000_000_000.0), spend),
        _ => (Some(10.0 + f64::from(number % 50)), spend),
    }
}

/// The generator's statements, one per table. `$1`/`$2` are the first and
/// last user number, `$3` the Fernet tokens and `$4` the plaintexts.
fn statements() -> Vec<(&'static str, String)> {
    let token = |salt: u32| format!("($3::text[])[1 + (g + {salt}) % cardinality($3::text[])]");
    let plain = |salt: u32| format!("($4::text[])[1 + (g + {salt}) % cardinality($4::text[])]");
    let users = "generate_series($1::int, $2::int) g";
    let uid = USER_ID_SQL;
    vec![
        (
            "user_settings",
            format!(
                "INSERT INTO orgkeeper.user_settings
                   (user_id, email, language, agent, max_iterations, confirmation_mode,
                    llm_model, llm_base_url, llm_api_key, llm_api_key_for_byor, search_api_key,
                    sandbox_api_key, enable_default_condenser, enable_sound_notifications,
                    user_consents_to_analytics, accepted_tos, mcp_config, max_budget_per_task,
                    user_version, billing_margin)
                 SELECT {uid},
                        CASE WHEN g % 50 <> 7 THEN 'legacy-user-' || g || '@example.com' END,
                        (ARRAY['en', 'de', 'fr', 'ja'])[1 + g % 4], 'CodeActAgent', 100 + (g % 3) * 50,
                        g % 2 = 0,
                        (ARRAY[NULL, 'litellm_proxy/claude-sonnet-4-20250514', 'anthropic/claude-3-5-sonnet-20241022',
                               'openai/gpt-4o', 'litellm_proxy/claude-opus-4-20250514'])[1 + g % 5],
                        (ARRAY[NULL, 'https://llm-proxy.app.all-hands.dev', 'https://api.anthropic.com',
                               'https://api.openai.com/v1', NULL])[1 + g % 5],
                        CASE WHEN g % 20 < 16 THEN {t0} WHEN g % 20 < 18 THEN {p0} END,
                        CASE WHEN g % 8 = 1 THEN {t1} WHEN g % 8 = 2 THEN {p1} END,
                        CASE WHEN g % 10 = 3 THEN {t2} WHEN g % 20 = 4 THEN {p2} END,
                        CASE WHEN g % 25 = 5 THEN {t3} END,
                        true, g % 3 = 0, CASE WHEN g % 4 <> 0 THEN true END,
                        now() - (g % 1000) * interval '1 hour',
                        CASE WHEN g % 7 = 0 THEN jsonb_build_object('sse_servers', jsonb_build_array('https://mcp.example.com/' || g)) END,
                        CASE WHEN g % 4 = 0 THEN 5.0 END,
                        1 + g % 5,
                        (ARRAY[NULL, 0, 1, 2])[1 + g % 4]
                   FROM {users}",
                t0 = token(0),
                p0 = plain(0),
                t1 = token(1),
                p1 = plain(1),
                t2 = token(2),
                p2 = plain(2),
                t3 = token(3),
            ),
        ),
        (
            "conversation_metadata",
            format!(
                "INSERT INTO orgkeeper.conversation_metadata
                   (conversation_id, user_id, selected_repository, selected_branch, git_provider,
                    title, trigger, accumulated_cost, prompt_tokens, completion_tokens, total_tokens,
                    llm_model, last_updated_at, created_at)
                 SELECT 'bench-' || g || '-' || k, {uid}, 'acme/repo-' || (g % 500), 'main', 'github',
                        'Conversation ' || k || ' of user ' || g, 'gui', (g % 97) * 0.01 * k,
                        1000 * k, 200 * k, 1200 * k, 'litellm_proxy/claude-sonnet-4',
                        now() - k * interval '1 day', now() - k * interval '2 days'
                   FROM {users}, generate_series(1, g % 13) k"
            ),
        ),
        (
            "conversation_metadata_saas",
            format!(
                "INSERT INTO orgkeeper.conversation_metadata_saas (conversation_id, user_id, created_at)
                 SELECT 'bench-' || g || '-1', {uid}, now() - interval '2 days'
                   FROM {users} WHERE g % 4 = 0"
            ),
        ),
        (
            "stripe_customers",
            format!(
                "INSERT INTO orgkeeper.stripe_customers (user_id, stripe_customer_id)
                 SELECT {uid}, 'cus_bench' || g FROM {users} WHERE g % 2 = 0"
            ),
        ),
        (
            "slack_users",
            format!(
                "INSERT INTO orgkeeper.slack_users (user_id, slack_user_id, slack_display_name)
                 SELECT {uid}, 'U' || g || 'X' || k, 'user ' || g FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "slack_conversation",
            format!(
                "INSERT INTO orgkeeper.slack_conversation (conversation_id, channel_id, user_id, parent_id)
                 SELECT 'bench-' || g || '-' || k, 'C' || (g % 100), {uid}, g || '.' || k
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "api_keys",
            format!(
                "INSERT INTO orgkeeper.api_keys (key_hash, user_id, name, last_used_at, expires_at)
                 SELECT md5('key:' || g || ':' || k), {uid}, 'key ' || k,
                        now() - k * interval '3 hours', now() + interval '90 days'
                   FROM {users}, generate_series(1, 3) k"
            ),
        ),
        (
            "custom_secrets",
            format!(
                "INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value, description)
                 SELECT {uid}, 'SECRET_' || k,
                        CASE WHEN k = 2 AND g % 3 = 0 THEN {p} ELSE {t} END,
                        'generated by orgkeeper''s legacy data generator'
                   FROM {users}, generate_series(1, 2) k",
                p = plain(5),
                t = "($3::text[])[1 + (g + k) % cardinality($3::text[])]",
            ),
        ),
        (
            "billing_sessions",
            format!(
                "INSERT INTO orgkeeper.billing_sessions
                   (id, user_id, status, billing_session_type, price, price_code)
                 SELECT 'bs-' || g || '-' || k, {uid},
                        CASE WHEN k = 1 AND g % 3 = 0 THEN 'completed'
                             WHEN k = 1 THEN 'cancelled' ELSE 'in_progress' END,
                        'DIRECT_PAYMENT', 10 * k, 'price_' || k
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "user_repos",
            format!(
                "INSERT INTO orgkeeper.user_repos (user_id, repo_id, admin)
                 SELECT {uid}, 'acme/repo-' || ((2 * g + k) % 1000), k = 1
                   FROM {users}, generate_series(1, 2) k"
            ),
        ),
        (
            "gitlab_webhook",
            format!(
                "INSERT INTO orgkeeper.gitlab_webhook
                   (group_id, project_id, user_id, webhook_exists, webhook_url, webhook_secret,
                    webhook_uuid, scopes, last_synced)
                 SELECT 'group-' || (g % 200), 'project-' || g, {uid}, true,
                        'https://hooks.example.com/gitlab/' || g,
                        CASE WHEN g % 10 < 2 THEN {t} WHEN g % 10 = 2 THEN {p} END,
                        md5('hook:' || g), ARRAY['api', 'read_repository'], now() - interval '1 day'
                   FROM {users}",
                t = token(6),
                p = plain(6),
            ),
        ),
    ]
}

/// The tables the generator writes.
pub fn tables() -> Vec<&'static str> {
    statements().into_iter().map(|(t, _)| t).collect()
}

/// Inserts users `first..first+n` with their related rows, one statement per
/// table, the tables in parallel (as many at once as `pool` allows);
/// `progress`, if given, advances once per table. Returns the number of rows
/// inserted.
pub async fn generate(
    pool: &PgPool,
    first: u32,
    n: u32,
    values: &LegacyValues,
    progress: Option<&ProgressBar>,
) -> anyhow::Result<u64> {
    anyhow::ensure!(n >= 1, "generate at least one user");
    let last = i32::try_from(u64::from(first) + u64::from(n) - 1).context("user numbers")?;
    let first = i32::try_from(first).context("user numbers")?;
    let mut tasks = tokio::task::JoinSet::new();
    for (table, sql) in statements() {
        let (pool, progress) = (pool.clone(), progress.cloned());
        let values = values.clone();
        tasks.spawn(async move {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(first)
                .bind(last)
                .bind(&values.tokens)
                .bind(&values.plaintexts)
                .execute(&pool)
                .await
                .with_context(|| format!("generating {table}"))?;
            if let Some(bar) = progress {
                bar.inc(1);
            }
            Ok::<_, anyhow::Error>(done.rows_affected())
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done??;
    }
    Ok(rows)
}

/// The users generated as numbers `first..first+n`, in number order.
pub async fn users(pool: &PgPool, first: u32, n: u32) -> anyhow::Result<Vec<LegacyUser>> {
    let rows: Vec<(i32, Uuid, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT g, s.user_id, s.email
           FROM generate_series($1::int, $2::int) g
           JOIN orgkeeper.user_settings s ON s.user_id = {USER_ID_SQL}
          ORDER BY g"
    )))
    .bind(i32::try_from(first).context("user numbers")?)
    .bind(i32::try_from(u64::from(first) + u64::from(n) - 1).context("user numbers")?)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(g, user_id, email)| LegacyUser {
            number: g as u32,
            user_id,
            email,
        })
        .collect())
}

/// Puts `users` into the simulators as the legacy application left them:
/// a LiteLLM user with [`litellm_account`]'s budget and spend and one or two
/// personal keys, and, for each of their `stripe_customers` rows, a Stripe
/// customer tagged with the user id (whose id the row then holds).
pub async fn seed_simulators(
    pool: &PgPool,
    users: &[LegacyUser],
    litellm: &LiteLlmSimulator,
    stripe: &StripeSimulator,
) -> anyhow::Result<()> {
    for user in users {
        let id = user.user_id.to_string();
        let keys: Vec<String> = (0..1 + user.number % 2)
            .map(|k| format!("sk-legacy-{id}-{k}"))
            .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (max_budget, spend) = litellm_account(user.number);
        litellm.seed_user(&id, user.email.as_deref(), max_budget, spend, &keys);
    }
    let customers: Vec<(i64, Uuid, Option<String>)> = sqlx::query_as(
        "SELECT c.id, c.user_id, s.email
           FROM orgkeeper.stripe_customers c JOIN orgkeeper.user_settings s USING (user_id)
          WHERE c.user_id = ANY ($1)",
    )
    .bind(users.iter().map(|u| u.user_id).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let (ids, cus): (Vec<i64>, Vec<String>) = customers
        .iter()
        .map(|(id, user, email)| {
            let user = user.to_string();
            (
                *id,
                stripe.seed_customer(email.as_deref(), &[("user_id", user.as_str())]),
            )
        })
        .unzip();
    sqlx::query(
        "UPDATE orgkeeper.stripe_customers c SET stripe_customer_id = v.cus
           FROM unnest($1::bigint[], $2::text[]) AS v(id, cus) WHERE c.id = v.id",
    )
    .bind(&ids)
    .bind(&cus)
    .execute(pool)
    .await?;
    Ok(())
}

//! Stories about moving pre-organization (legacy) users into personal
//! organizations: orgkeeper.migrate_user, migrate_users, verify_user_migration
//! and rollback_user_migration (sql/migration.sql), and `orgkeeper users`.

use crate::support::{assert_refusal, db_error, TestDb};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Every row that belongs to `user` in every table migration touches, as
/// jsonb; equal snapshots mean equal state.
async fn snapshot(db: &TestDb, user: Uuid) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'user_settings', (SELECT jsonb_agg(to_jsonb(t)) FROM orgkeeper.user_settings t WHERE t.user_id = $1),
            'conversation_metadata', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.conversation_id) FROM orgkeeper.conversation_metadata t WHERE t.user_id = $1),
            'conversation_metadata_saas', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.conversation_id) FROM orgkeeper.conversation_metadata_saas t WHERE t.user_id = $1),
            'stripe_customers', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.stripe_customers t WHERE t.user_id = $1),
            'slack_users', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.slack_users t WHERE t.user_id = $1),
            'slack_conversation', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.slack_conversation t WHERE t.user_id = $1),
            'api_keys', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.api_keys t WHERE t.user_id = $1),
            'custom_secrets', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.custom_secrets t WHERE t.user_id = $1),
            'billing_sessions', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.billing_sessions t WHERE t.user_id = $1),
            'user_repos', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.user_repos t WHERE t.user_id = $1),
            'gitlab_webhook', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.gitlab_webhook t WHERE t.user_id = $1),
            'users', (SELECT jsonb_agg(to_jsonb(t)) FROM orgkeeper.users t WHERE t.id = $1),
            'org', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.id) FROM orgkeeper.org t
                     WHERE t.created_by = $1 OR t.id IN (SELECT m.org_id FROM orgkeeper.org_member m WHERE m.user_id = $1)),
            'org_member', (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.org_id) FROM orgkeeper.org_member t WHERE t.user_id = $1))",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .expect("snapshot")
}

/// Counts of the rows migration writes, database-wide: equal before and
/// after a call means the call changed nothing.
async fn footprint(db: &TestDb) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
            'org', (SELECT count(*) FROM orgkeeper.org),
            'users', (SELECT count(*) FROM orgkeeper.users),
            'org_member', (SELECT count(*) FROM orgkeeper.org_member),
            'actions', (SELECT count(*) FROM orgkeeper.pending_external_actions),
            'log', (SELECT count(*) FROM orgkeeper.user_migration),
            'errors', (SELECT count(*) FROM orgkeeper.user_migration_error),
            'saas', (SELECT count(*) FROM orgkeeper.conversation_metadata_saas),
            'migrated', (SELECT count(*) FROM orgkeeper.user_settings WHERE already_migrated),
            'with_org', (SELECT count(*) FROM orgkeeper.api_keys WHERE org_id IS NOT NULL))",
    )
    .fetch_one(&db.pool)
    .await
    .expect("footprint")
}

/// A legacy user with rows in every related table: legacy ciphertext in
/// user_settings, one custom secret and the GitLab webhook secret; a
/// completed billing session; a saas conversation row without org.
async fn seed_legacy_user(db: &TestDb, user: Uuid, email: &str) {
    let statements = [
        "INSERT INTO orgkeeper.user_settings (user_id, email, language, agent, max_iterations, security_analyzer,
                confirmation_mode, llm_model, llm_base_url, llm_api_key, llm_api_key_for_byor, search_api_key,
                sandbox_api_key, remote_runtime_resource_factor, enable_default_condenser, condenser_max_size,
                enable_sound_notifications, enable_proactive_conversation_starters, enable_solvability_analysis,
                user_consents_to_analytics, accepted_tos, sandbox_base_container_image, sandbox_runtime_container_image,
                mcp_config, max_budget_per_task, user_version, billing_margin)
         VALUES ($1, $2, 'de', 'CodeActAgent', 120, 'llm', true, 'litellm_proxy/claude-sonnet-4-20250514', 'https://llm.example',
                 'legacy:llm-key', 'ok1:byor-already-current', 'legacy:search', NULL, 2, false, 40,
                 true, false, true, true, '2024-05-01 10:00:00+00', 'base:1', 'runtime:1',
                 '{\"servers\": [\"a\"]}', 2.5, 3, 1.25)",
        // The proxy's URL as orgkeeper migrate records it: with version 3's
        // default model, these are the defaults, not custom settings.
        "INSERT INTO orgkeeper.deployment_setting (name, value, set_by)
         SELECT 'litellm_base_url', 'https://llm.example', 'test' WHERE $1 IS NOT NULL
         ON CONFLICT (name) DO NOTHING",
        "INSERT INTO orgkeeper.stripe_customers (user_id, stripe_customer_id) VALUES ($1, 'cus_' || left($1::text, 8))",
        "INSERT INTO orgkeeper.slack_users (user_id, slack_user_id, slack_display_name) VALUES ($1, 'U1', 'alice')",
        "INSERT INTO orgkeeper.slack_conversation (user_id, conversation_id, channel_id) VALUES ($1, 'conv-s', 'C1')",
        "INSERT INTO orgkeeper.api_keys (user_id, key_hash, name) VALUES ($1, 'h1', 'laptop'), ($1, 'h2', 'ci')",
        "INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value) VALUES ($1, 'GH', 'legacy:gh'), ($1, 'NPM', 'ok1:npm')",
        "INSERT INTO orgkeeper.billing_sessions (user_id, status, price) VALUES ($1, 'completed', 10), ($1, 'cancelled', 5)",
        "INSERT INTO orgkeeper.user_repos (user_id, repo_id, admin) VALUES ($1, 'r1', true), ($1, 'r2', false)",
        "INSERT INTO orgkeeper.gitlab_webhook (user_id, group_id, webhook_secret) VALUES ($1, 'g1', 'legacy:wh')",
        "INSERT INTO orgkeeper.conversation_metadata (conversation_id, user_id, title)
         VALUES ($1::text || '-c1', $1, 'first'), ($1::text || '-c2', $1, 'second'), ($1::text || '-c3', $1, 'third')",
        "INSERT INTO orgkeeper.conversation_metadata_saas (conversation_id, user_id) VALUES ($1::text || '-old', $1)",
    ];
    for s in statements {
        let q = sqlx::query(s).bind(user);
        let q = if s.contains("$2") { q.bind(email) } else { q };
        q.execute(&db.pool).await.expect(s);
    }
}

async fn migrate(db: &TestDb, user: Uuid) -> Value {
    sqlx::query_scalar("SELECT orgkeeper.migrate_user($1)")
        .bind(user)
        .fetch_one(&db.pool)
        .await
        .expect("migrate_user")
}

async fn rollback(db: &TestDb, user: Uuid) -> Result<Value, sqlx::Error> {
    sqlx::query_scalar("SELECT orgkeeper.rollback_user_migration($1)")
        .bind(user)
        .fetch_one(&db.pool)
        .await
}

async fn verify(db: &TestDb, user: Uuid) -> BTreeMap<String, (bool, String)> {
    let rows: Vec<(String, bool, String)> =
        sqlx::query_as("SELECT check_name, ok, detail FROM orgkeeper.verify_user_migration($1)")
            .bind(user)
            .fetch_all(&db.pool)
            .await
            .expect("verify");
    assert_eq!(rows.len(), 9, "one row per check: {rows:?}");
    rows.into_iter().map(|(n, ok, d)| (n, (ok, d))).collect()
}

fn failing(checks: &BTreeMap<String, (bool, String)>) -> Vec<&str> {
    checks
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(n, _)| n.as_str())
        .collect()
}

fn action_kinds(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list of actions")
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_string())
        .collect()
}

fn action_ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect()
}

/// What the daemon would do: perform the actions and write their results
/// back, with `user_max_budget` as the LiteLLM handler reports it.
async fn complete_actions(db: &TestDb, ids: &[i64], user_max_budget: f64) {
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions
            SET status = 'done', attempts = 1, finished_at = now(), updated_at = now(),
                result = CASE kind WHEN 'litellm.migrate_user'
                                   THEN jsonb_build_object('user_max_budget', $2::float8, 'credits', 42.5,
                                                           'max_budget_before', 100.0, 'spend_before', 57.5)
                                   ELSE '{}'::jsonb END
          WHERE id = ANY ($1)",
    )
    .bind(ids)
    .bind(user_max_budget)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// What the daemon's secrets.reencrypt handler does, driven only by the
/// action's payload: every listed column gets current ("ok1:") ciphertext.
async fn reencrypt(db: &TestDb, action_id: i64) {
    let payload: Value =
        sqlx::query_scalar("SELECT payload FROM orgkeeper.pending_external_actions WHERE id = $1")
            .bind(action_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    for item in payload["items"].as_array().expect("items") {
        let (table, column, key) = (
            item["table"].as_str().unwrap(),
            item["column"].as_str().unwrap(),
            &item["key"],
        );
        let done = match (table, column) {
            ("org", "llm_api_key" | "llm_api_key_for_byor" | "search_api_key" | "sandbox_api_key") => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE orgkeeper.org SET {column} = 'ok1:' || md5({column}) WHERE id = $1"
                )))
                .bind(Uuid::parse_str(key["id"].as_str().unwrap()).unwrap())
                .execute(&db.pool)
                .await
            }
            ("org_member", "llm_api_key") => {
                sqlx::query("UPDATE orgkeeper.org_member SET llm_api_key = 'ok1:' || md5(llm_api_key) WHERE org_id = $1 AND user_id = $2")
                    .bind(Uuid::parse_str(key["org_id"].as_str().unwrap()).unwrap())
                    .bind(Uuid::parse_str(key["user_id"].as_str().unwrap()).unwrap())
                    .execute(&db.pool)
                    .await
            }
            ("custom_secrets", "secret_value") => {
                sqlx::query("UPDATE orgkeeper.custom_secrets SET secret_value = 'ok1:' || md5(secret_value) WHERE id = $1")
                    .bind(key["id"].as_i64().unwrap())
                    .execute(&db.pool)
                    .await
            }
            ("gitlab_webhook", "webhook_secret") => {
                sqlx::query("UPDATE orgkeeper.gitlab_webhook SET webhook_secret = 'ok1:' || md5(webhook_secret) WHERE id = $1")
                    .bind(key["id"].as_i64().unwrap())
                    .execute(&db.pool)
                    .await
            }
            other => panic!("unexpected re-encryption target {other:?}"),
        }
        .unwrap();
        assert_eq!(done.rows_affected(), 1, "{item} names exactly one row");
    }
}

async fn count(db: &TestDb, sql: &str, user: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .fetch_one(&db.pool)
        .await
        .expect(sql)
}

const RELATED_WITHOUT_ORG: &str = "SELECT
      (SELECT count(*) FROM orgkeeper.stripe_customers WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.slack_users WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.slack_conversation WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.api_keys WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.custom_secrets WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.billing_sessions WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.user_repos WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.gitlab_webhook WHERE user_id = $1 AND org_id IS NULL)
    + (SELECT count(*) FROM orgkeeper.conversation_metadata_saas WHERE user_id = $1 AND org_id IS NULL)";

const RELATED_IN_PERSONAL_ORG: &str = "SELECT
      (SELECT count(*) FROM orgkeeper.stripe_customers WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.slack_users WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.slack_conversation WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.api_keys WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.custom_secrets WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.billing_sessions WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.user_repos WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.gitlab_webhook WHERE user_id = $1 AND org_id = $1)
    + (SELECT count(*) FROM orgkeeper.conversation_metadata_saas WHERE user_id = $1 AND org_id = $1)";

#[tokio::test]
async fn a_legacy_user_is_migrated_verified_after_the_daemon_and_rolled_back_exactly() {
    let db = TestDb::migrated().await;
    let user = Uuid::new_v4();
    // Before the migration the user already joined a team org (so a users
    // row exists), and one of their API keys belongs to that org.
    let acme_owner = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1)")
        .bind(acme_owner)
        .execute(&db.pool)
        .await
        .unwrap();
    let acme: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Acme', $1)")
        .bind(acme_owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.users (id, email, current_org_id, language) VALUES ($1, 'alice@old.example', $2, NULL)")
        .bind(user)
        .bind(acme)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $2, orgkeeper.role_id('member'))")
        .bind(acme)
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    seed_legacy_user(&db, user, "alice@example.com").await;
    sqlx::query("INSERT INTO orgkeeper.api_keys (user_id, org_id, key_hash, name) VALUES ($1, $2, 'h3', 'acme key')")
        .bind(user)
        .bind(acme)
        .execute(&db.pool)
        .await
        .unwrap();
    // Someone else's legacy rows are not touched.
    let bystander = Uuid::new_v4();
    seed_legacy_user(&db, bystander, "bob@example.com").await;
    let bystander_before = snapshot(&db, bystander).await;
    let before = snapshot(&db, user).await;

    let report = migrate(&db, user).await;

    assert_eq!(report["status"], "migrated", "{report}");
    assert_eq!(report["org_id"], json!(user));
    assert_eq!(report["org_name"], json!(format!("user_{user}_org")));
    assert_eq!(
        report["moved"],
        json!({"stripe_customers": 1, "slack_users": 1, "slack_conversation": 1, "api_keys": 2,
               "custom_secrets": 2, "billing_sessions": 2, "user_repos": 2, "gitlab_webhook": 1,
               "conversation_metadata_saas": 1})
    );
    assert_eq!(report["conversations_copied"], 3);
    assert_eq!(report["users_row"], "updated");
    assert_eq!(
        report["legacy_secrets"], 4,
        "org search key, member key, one custom secret, the webhook secret"
    );
    assert_eq!(
        action_kinds(&report["actions"]),
        [
            "litellm.migrate_user",
            "stripe.migrate_customer",
            "secrets.reencrypt"
        ]
    );
    // Every related row points at the org; the one already in Acme stays there.
    assert_eq!(count(&db, RELATED_WITHOUT_ORG, user).await, 0);
    assert_eq!(count(&db, RELATED_IN_PERSONAL_ORG, user).await, 16);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM orgkeeper.api_keys WHERE user_id = $1 AND org_id <> $1",
            user
        )
        .await,
        1
    );
    // Legacy rows are kept; the user is marked migrated.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM orgkeeper.conversation_metadata WHERE user_id = $1",
            user
        )
        .await,
        3
    );
    let settings = sqlx::query(
        "SELECT already_migrated, llm_api_key FROM orgkeeper.user_settings WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(settings.get::<bool, _>(0));
    assert_eq!(settings.get::<String, _>(1), "legacy:llm-key");
    // The org carries the settings and the seeds' rules.
    let org = sqlx::query(
        "SELECT kind, created_by, contact_email, llm_model, llm_base_url, agent, max_iterations, confirmation_mode,
                org_version, billing_margin, byor_export_enabled, mcp_config, llm_api_key, llm_api_key_for_byor,
                search_api_key, enable_default_condenser, enable_proactive_conversation_starters,
                enable_solvability_analysis, condenser_max_size, max_budget_per_task, sandbox_runtime_container_image,
                remote_runtime_resource_factor, provisioning_status
           FROM orgkeeper.org WHERE id = $1",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(org.get::<String, _>("kind"), "personal");
    assert_eq!(org.get::<Uuid, _>("created_by"), user);
    assert_eq!(org.get::<String, _>("contact_email"), "alice@example.com");
    assert_eq!(
        org.get::<String, _>("llm_model"),
        "litellm_proxy/claude-sonnet-4-20250514"
    );
    assert_eq!(org.get::<String, _>("llm_base_url"), "https://llm.example");
    assert_eq!(org.get::<String, _>("agent"), "CodeActAgent");
    assert_eq!(org.get::<i32, _>("max_iterations"), 120);
    assert!(org.get::<bool, _>("confirmation_mode"));
    assert_eq!(org.get::<i32, _>("org_version"), 3);
    assert_eq!(org.get::<f64, _>("billing_margin"), 1.25);
    assert!(org.get::<bool, _>("byor_export_enabled"));
    assert_eq!(org.get::<Value, _>("mcp_config"), json!({"servers": ["a"]}));
    assert_eq!(
        org.get::<Option<String>, _>("llm_api_key"),
        None,
        "the user's LiteLLM key is their membership's"
    );
    assert_eq!(
        org.get::<String, _>("llm_api_key_for_byor"),
        "ok1:byor-already-current"
    );
    assert_eq!(org.get::<String, _>("search_api_key"), "legacy:search");
    assert!(!org.get::<bool, _>("enable_default_condenser"));
    assert!(!org.get::<bool, _>("enable_proactive_conversation_starters"));
    assert!(org.get::<bool, _>("enable_solvability_analysis"));
    assert_eq!(org.get::<i32, _>("condenser_max_size"), 40);
    assert_eq!(org.get::<f64, _>("max_budget_per_task"), 2.5);
    assert_eq!(
        org.get::<String, _>("sandbox_runtime_container_image"),
        "runtime:1"
    );
    assert_eq!(org.get::<i32, _>("remote_runtime_resource_factor"), 2);
    assert_eq!(org.get::<String, _>("provisioning_status"), "pending");
    // The users row: current org is the personal org, profile gaps filled.
    let u =
        sqlx::query("SELECT current_org_id, email, language FROM orgkeeper.users WHERE id = $1")
            .bind(user)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(u.get::<Uuid, _>(0), user);
    assert_eq!(
        u.get::<String, _>(1),
        "alice@old.example",
        "an existing email is kept"
    );
    assert_eq!(
        u.get::<String, _>(2),
        "de",
        "a missing language is filled in"
    );
    let (role, status, key): (String, String, String) = sqlx::query_as(
        "SELECT r.name, m.status, m.llm_api_key FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
          WHERE m.org_id = $1 AND m.user_id = $1",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (role.as_str(), status.as_str(), key.as_str()),
        ("owner", "active", "legacy:llm-key")
    );
    // No generic provisioning: litellm.migrate_user creates the team.
    assert_eq!(
        count(&db, "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'litellm.provision_org'", user).await,
        0
    );
    let stripe: Value = sqlx::query_scalar(
        "SELECT payload FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'stripe.migrate_customer'",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        stripe,
        json!({"stripe_customer_id": format!("cus_{}", &user.to_string()[..8]), "org_id": user,
               "user_id": user, "email": "alice@example.com"})
    );
    assert_eq!(snapshot(&db, bystander).await, bystander_before);

    // Before the daemon ran: the failing checks say what is missing.
    let checks = verify(&db, user).await;
    assert_eq!(
        failing(&checks),
        [
            "external_actions_done",
            "litellm_budget_unlimited",
            "no_legacy_ciphertext"
        ]
    );
    assert!(
        checks["external_actions_done"]
            .1
            .contains("litellm.migrate_user pending"),
        "{checks:?}"
    );
    assert!(
        checks["litellm_budget_unlimited"].1.contains("pending"),
        "{checks:?}"
    );
    let legacy = &checks["no_legacy_ciphertext"].1;
    for place in [
        "org.search_api_key",
        "org_member.llm_api_key",
        "custom_secrets.secret_value",
        "gitlab_webhook.webhook_secret",
    ] {
        assert!(legacy.contains(place), "{legacy} names {place}");
    }
    assert!(
        !legacy.contains("llm_api_key_for_byor"),
        "current ciphertext is not legacy: {legacy}"
    );

    // The daemon ran, but LiteLLM reported a finite user budget.
    let ids = action_ids(&report["actions"]);
    complete_actions(&db, &ids, 100.0).await;
    let checks = verify(&db, user).await;
    assert_eq!(
        failing(&checks),
        ["litellm_budget_unlimited", "no_legacy_ciphertext"]
    );
    assert!(
        checks["litellm_budget_unlimited"]
            .1
            .contains("not the unlimited sentinel"),
        "{checks:?}"
    );

    // The daemon did everything right.
    complete_actions(&db, &ids, 1_000_000_000.0).await;
    reencrypt(&db, ids[2]).await;
    let checks = verify(&db, user).await;
    assert!(failing(&checks).is_empty(), "{checks:#?}");

    // Rollback: the database side is undone exactly; the external side is enqueued.
    let undo = rollback(&db, user).await.expect("rollback");
    assert_eq!(undo["status"], "rolled_back", "{undo}");
    assert_eq!(undo["actions_cancelled"], json!([]));
    assert_eq!(
        action_kinds(&undo["actions_enqueued"]),
        [
            "litellm.rollback_user",
            "stripe.rollback_customer",
            "litellm.delete_team"
        ],
        "the team is deleted after the budget moved back: same subject, id order"
    );
    let enqueued = action_ids(&undo["actions_enqueued"]);
    assert!(enqueued.windows(2).all(|w| w[0] < w[1]));
    let subjects: i64 = sqlx::query_scalar("SELECT count(DISTINCT subject) FROM orgkeeper.pending_external_actions WHERE id = ANY ($1)")
        .bind(&enqueued)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(subjects, 1);
    let litellm: Value =
        sqlx::query_scalar("SELECT payload FROM orgkeeper.pending_external_actions WHERE id = $1")
            .bind(enqueued[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(litellm["migrate_action_id"], ids[0]);
    assert_eq!(litellm["team_id"], json!(user.to_string()));
    assert_eq!(undo["legacy_ciphertext_restored"], 2);
    assert_eq!(
        snapshot(&db, user).await,
        before,
        "rollback restores the pre-migration state exactly"
    );
    assert_eq!(snapshot(&db, bystander).await, bystander_before);
    let checks = verify(&db, user).await;
    assert!(!checks["migration_recorded"].0);
    assert!(
        checks["migration_recorded"].1.contains("not migrated"),
        "{checks:?}"
    );

    // Rolled back twice: nothing to do. Migrated again: a fresh migration.
    assert_eq!(rollback(&db, user).await.unwrap()["status"], "not_migrated");
    assert_eq!(migrate(&db, user).await["status"], "migrated");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM orgkeeper.user_migration WHERE user_id = $1",
            user
        )
        .await,
        2,
        "the rolled-back migration stays in the log"
    );
}

#[tokio::test]
async fn rolling_back_before_the_daemon_ran_cancels_the_actions_and_restores_exactly() {
    let db = TestDb::migrated().await;
    let user = Uuid::new_v4();
    seed_legacy_user(&db, user, "carol@example.com").await;
    let before = snapshot(&db, user).await;

    let report = migrate(&db, user).await;
    assert_eq!(report["users_row"], "created");
    let undo = rollback(&db, user).await.expect("rollback");

    assert_eq!(
        action_kinds(&undo["actions_cancelled"]),
        [
            "litellm.migrate_user",
            "stripe.migrate_customer",
            "secrets.reencrypt"
        ],
        "actions that never started had no external effect"
    );
    assert_eq!(
        action_kinds(&undo["actions_enqueued"]),
        ["litellm.delete_team"]
    );
    assert_eq!(undo["users_row"], "deleted");
    assert_eq!(snapshot(&db, user).await, before);
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM orgkeeper.pending_external_actions WHERE id = ANY ($1) ORDER BY id",
    )
    .bind(action_ids(&report["actions"]))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(statuses, ["cancelled"; 3]);
}

#[tokio::test]
async fn rollback_refuses_when_the_personal_org_gained_a_member_or_new_rows() {
    let db = TestDb::migrated().await;
    let user = Uuid::new_v4();
    seed_legacy_user(&db, user, "dave@example.com").await;
    migrate(&db, user).await;

    // A row created in the organization model after the migration.
    sqlx::query(
        "INSERT INTO orgkeeper.api_keys (user_id, org_id, key_hash) VALUES ($1, $1, 'new')",
    )
    .bind(user)
    .execute(&db.pool)
    .await
    .unwrap();
    let state = snapshot(&db, user).await;
    let err = rollback(&db, user).await.expect_err("refused");
    assert_refusal(&err, "55000", &["api_keys: 1"]);
    assert_eq!(snapshot(&db, user).await, state, "nothing changed");
    sqlx::query("DELETE FROM orgkeeper.api_keys WHERE key_hash = 'new'")
        .execute(&db.pool)
        .await
        .unwrap();

    // Another member.
    let other = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'eve@example.com')")
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $2, orgkeeper.role_id('member'))")
        .bind(user)
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    let state = snapshot(&db, user).await;
    let err = rollback(&db, user).await.expect_err("refused");
    let (code, message) = db_error(&err);
    assert_eq!(code, "55000");
    assert!(
        message.contains("other members") && message.contains("eve@example.com"),
        "{message}"
    );
    assert_eq!(snapshot(&db, user).await, state, "nothing changed");
}

#[tokio::test]
async fn twenty_concurrent_migrations_of_one_user_migrate_it_once() {
    let db = TestDb::migrated().await;
    let user = Uuid::new_v4();
    seed_legacy_user(&db, user, "frank@example.com").await;

    let mut calls = Vec::new();
    for _ in 0..20 {
        let url = db.url.clone();
        calls.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let report: Value = sqlx::query_scalar("SELECT orgkeeper.migrate_user($1)")
                .bind(user)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            report["status"].as_str().unwrap().to_string()
        }));
    }
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| *s == "migrated").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "already_migrated").count(),
        19,
        "{statuses:?}"
    );
    for (sql, expected) in [
        (
            "SELECT count(*) FROM orgkeeper.user_migration WHERE user_id = $1",
            1,
        ),
        (
            "SELECT count(*) FROM orgkeeper.org WHERE created_by = $1",
            1,
        ),
        (
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE user_id = $1",
            3,
        ),
        (
            "SELECT count(*) FROM orgkeeper.conversation_metadata_saas WHERE user_id = $1",
            4,
        ),
    ] {
        assert_eq!(count(&db, sql, user).await, expected, "{sql}");
    }
}

/// `n` legacy users with a few related rows each, in one statement per table.
/// `n` legacy users from the generator `bench migrate` uses: OpenHands'
/// Fernet-wrapped (or plaintext) credentials and about 20 related rows each.
async fn seed_many(db: &TestDb, n: u32) {
    let jwt_secret = secrecy::SecretString::from("openhands-jwt-secret");
    let values = orgkeeper::legacy_data::LegacyValues::new(&jwt_secret);
    orgkeeper::legacy_data::generate(&db.pool, 1, n, &values, None)
        .await
        .expect("generated legacy users");
}

#[tokio::test]
async fn three_sessions_back_fill_a_thousand_users_each_exactly_once() {
    let db = TestDb::migrated().await;
    seed_many(&db, 1000).await;
    let (customers, conversations): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orgkeeper.stripe_customers),
                (SELECT count(*) FROM (SELECT conversation_id FROM orgkeeper.conversation_metadata
                                       UNION SELECT conversation_id FROM orgkeeper.conversation_metadata_saas) c)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(customers >= 400 && conversations >= 5000);

    let mut sessions = Vec::new();
    for _ in 0..3 {
        let url = db.url.clone();
        sessions.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let (mut total, mut batches) = (0i64, 0);
            loop {
                let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(50)")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                if n == 0 {
                    break;
                }
                assert!(n <= 50);
                total += n as i64;
                batches += 1;
            }
            (total, batches)
        }));
    }
    let mut total = 0;
    for s in sessions {
        total += s.await.unwrap().0;
    }
    assert_eq!(
        total, 1000,
        "the sessions together migrated every user once"
    );

    let (log, users, orgs, litellm, litellm_users, stripe, left, without_org): (i64, i64, i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM orgkeeper.user_migration),
                    (SELECT count(DISTINCT user_id) FROM orgkeeper.user_migration),
                    (SELECT count(*) FROM orgkeeper.org WHERE kind = 'personal'),
                    (SELECT count(*) FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.migrate_user'),
                    (SELECT count(DISTINCT user_id) FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.migrate_user'),
                    (SELECT count(*) FROM orgkeeper.pending_external_actions WHERE kind = 'stripe.migrate_customer'),
                    (SELECT count(*) FROM orgkeeper.user_settings WHERE already_migrated IS NOT TRUE),
                    (SELECT count(*) FROM orgkeeper.api_keys WHERE org_id IS DISTINCT FROM user_id)
                  + (SELECT count(*) FROM orgkeeper.custom_secrets WHERE org_id IS DISTINCT FROM user_id)
                  + (SELECT count(*) FROM orgkeeper.stripe_customers WHERE org_id IS DISTINCT FROM user_id)
                  + (SELECT count(*) FROM orgkeeper.gitlab_webhook WHERE org_id IS DISTINCT FROM user_id)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        (
            log,
            users,
            orgs,
            litellm,
            litellm_users,
            stripe,
            left,
            without_org
        ),
        (1000, 1000, 1000, 1000, 1000, customers, 0, 0)
    );
    let saas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.conversation_metadata_saas WHERE org_id = user_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(saas, conversations, "every conversation is in the org");
    // A batch user is verified like a single one (after the daemon).
    let user: Uuid =
        sqlx::query_scalar("SELECT user_id FROM orgkeeper.user_migration ORDER BY id LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let checks = verify(&db, user).await;
    assert_eq!(
        failing(&checks),
        [
            "external_actions_done",
            "litellm_budget_unlimited",
            "no_legacy_ciphertext"
        ]
    );
    assert_eq!(
        sqlx::query_scalar::<_, i32>("SELECT orgkeeper.migrate_users(10)")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn concurrent_back_fills_of_users_sharing_an_email_give_every_org_its_own_name() {
    let db = TestDb::migrated().await;
    // Same email, different case and spacing: names come from the ids (user_<id>_org), never from the email.
    sqlx::query(
        "INSERT INTO orgkeeper.user_settings (user_id, email)
         SELECT gen_random_uuid(), CASE g % 3 WHEN 0 THEN 'same@example.com' WHEN 1 THEN 'SAME@example.com'
                                             ELSE ' same@example.com ' END
           FROM generate_series(1, 300) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let mut sessions = Vec::new();
    for _ in 0..3 {
        let url = db.url.clone();
        sessions.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let mut total = 0i64;
            loop {
                let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(20)")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
                if n == 0 {
                    break total;
                }
                total += n as i64;
            }
        }));
    }
    let mut total = 0;
    for s in sessions {
        total += s.await.unwrap();
    }
    let (orgs, names, errors): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT lower(name)),
                (SELECT count(*) FROM orgkeeper.user_migration_error)
           FROM orgkeeper.org WHERE kind = 'personal'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((total, orgs, names, errors), (300, 300, 300, 0));
}

#[tokio::test]
async fn the_litellm_payload_carries_version_and_margin_so_the_daemon_applies_the_margin_below_version_4(
) {
    let db = TestDb::migrated().await;
    let cases = [
        (3, Some(1.5), true),
        (4, Some(1.5), false),
        (2, Some(1.0), false),
        (3, None, false),
    ];
    for (version, margin, apply) in cases {
        let user = Uuid::new_v4();
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id, email, user_version, billing_margin) VALUES ($1, $2, $3, $4)")
            .bind(user)
            .bind(format!("v{version}-{user}@example.com"))
            .bind(version)
            .bind(margin)
            .execute(&db.pool)
            .await
            .unwrap();
        migrate(&db, user).await;
        let payload: Value = sqlx::query_scalar(
            "SELECT payload FROM orgkeeper.pending_external_actions WHERE user_id = $1 AND kind = 'litellm.migrate_user'",
        )
        .bind(user)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(payload["user_id"], json!(user));
        assert_eq!(payload["org_id"], json!(user));
        assert_eq!(
            payload["email"],
            json!(format!("v{version}-{user}@example.com"))
        );
        assert_eq!(payload["user_version"], version);
        assert_eq!(payload["billing_margin"].as_f64(), margin);
        assert_eq!(
            payload["apply_margin"], apply,
            "version {version}, margin {margin:?}"
        );
        assert_eq!(payload["unlimited_budget"].as_f64(), Some(1_000_000_000.0));
        let (org_version, org_margin): (i32, Option<f64>) =
            sqlx::query_as("SELECT org_version, billing_margin FROM orgkeeper.org WHERE id = $1")
                .bind(user)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!((org_version, org_margin), (version, margin));
        // No Stripe customer, no legacy secrets: only the LiteLLM half
        // (the migration, then the member's key check).
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE user_id = $1",
                user
            )
            .await,
            2
        );
    }
}

#[tokio::test]
async fn the_byor_export_flag_follows_completed_billing_sessions() {
    let db = TestDb::migrated().await;
    for (statuses, expected) in [
        (vec!["completed"], true),
        (vec!["in_progress", "cancelled", "error"], false),
        (vec![], false),
    ] {
        let user = Uuid::new_v4();
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id) VALUES ($1)")
            .bind(user)
            .execute(&db.pool)
            .await
            .unwrap();
        for status in &statuses {
            sqlx::query("INSERT INTO orgkeeper.billing_sessions (user_id, status) VALUES ($1, $2)")
                .bind(user)
                .bind(status)
                .execute(&db.pool)
                .await
                .unwrap();
        }
        let report = migrate(&db, user).await;
        assert_eq!(report["byor_export_enabled"], expected, "{statuses:?}");
        let flag: bool =
            sqlx::query_scalar("SELECT byor_export_enabled FROM orgkeeper.org WHERE id = $1")
                .bind(user)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(flag, expected, "{statuses:?}");
        assert_eq!(report["org_name"], json!(format!("user_{user}_org")));
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_outcome_and_changes_nothing() {
    let db = TestDb::migrated().await;
    let migrated = Uuid::new_v4();
    seed_legacy_user(&db, migrated, "grace@example.com").await;
    migrate(&db, migrated).await;
    let start = footprint(&db).await;

    // NULL.
    for sql in [
        "SELECT orgkeeper.migrate_user(NULL)::text",
        "SELECT orgkeeper.rollback_user_migration(NULL)::text",
        "SELECT count(*)::text FROM orgkeeper.verify_user_migration(NULL)",
        "SELECT orgkeeper.migrate_users(NULL)::text",
    ] {
        let err = sqlx::query_scalar::<_, String>(sql)
            .fetch_one(&db.pool)
            .await
            .expect_err(sql);
        assert_eq!(db_error(&err).0, "22004", "{sql}");
    }
    let err = sqlx::query_scalar::<_, i32>("SELECT orgkeeper.migrate_users(0)")
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "22023", &[]);

    // Unknown user.
    let unknown = Uuid::new_v4();
    let report = migrate(&db, unknown).await;
    assert_eq!(report["status"], "not_found");
    assert!(report["detail"]
        .as_str()
        .unwrap()
        .contains("nothing changed"));
    assert_eq!(rollback(&db, unknown).await.unwrap()["status"], "not_found");
    let checks = verify(&db, unknown).await;
    assert!(
        checks
            .values()
            .all(|(ok, detail)| !ok && detail.contains("no user_settings row")),
        "{checks:?}"
    );

    // A user of the organization model without legacy settings.
    let modern = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1)")
        .bind(modern)
        .execute(&db.pool)
        .await
        .unwrap();
    let start_with_modern = footprint(&db).await;
    let report = migrate(&db, modern).await;
    assert_eq!(report["status"], "not_found");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("organization model"),
        "{report}"
    );
    assert_eq!(footprint(&db).await, start_with_modern);
    sqlx::query("DELETE FROM orgkeeper.users WHERE id = $1")
        .bind(modern)
        .execute(&db.pool)
        .await
        .unwrap();

    // already_migrated NULL: unknown state, refused; the back-fill leaves it alone.
    let unsure = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO orgkeeper.user_settings (user_id, already_migrated) VALUES ($1, NULL)",
    )
    .bind(unsure)
    .execute(&db.pool)
    .await
    .unwrap();
    let err = sqlx::query_scalar::<_, Value>("SELECT orgkeeper.migrate_user($1)")
        .bind(unsure)
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "55000");
    assert!(
        message.contains("already_migrated is NULL") && message.contains(&unsure.to_string()),
        "{message}"
    );
    let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(10)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        rollback(&db, unsure).await.unwrap()["status"],
        "not_migrated"
    );
    sqlx::query("DELETE FROM orgkeeper.user_settings WHERE user_id = $1")
        .bind(unsure)
        .execute(&db.pool)
        .await
        .unwrap();

    // Already migrated: reported, nothing changed.
    let report = migrate(&db, migrated).await;
    assert_eq!(report["status"], "already_migrated");
    assert_eq!(report["org_id"], json!(migrated));

    assert_eq!(footprint(&db).await, start);
}

#[tokio::test]
async fn the_back_fill_records_users_it_cannot_migrate_and_still_ends() {
    let db = TestDb::migrated().await;
    // A user whose personal org cannot be adopted (someone else joined it),
    // first in id order, so it is the first candidate of every walk.
    let odd = Uuid::from_u128(1);
    let guest = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'odd@example.com'), ($2, 'guest@example.com')")
        .bind(odd)
        .bind(guest)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(odd)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.add_member($1, $1, $2, 'member')")
        .bind(odd)
        .bind(guest)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, 'odd@example.com')",
    )
    .bind(odd)
    .execute(&db.pool)
    .await
    .unwrap();
    // Three users sharing an email and one without: names stay unique within a batch.
    let mut twins = Vec::new();
    for email in [
        Some("twin@example.com"),
        Some("TWIN@example.com"),
        Some("twin@example.com"),
        None,
    ] {
        let u = Uuid::new_v4();
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, $2)")
            .bind(u)
            .bind(email)
            .execute(&db.pool)
            .await
            .unwrap();
        twins.push(u);
    }

    // Batches of one: a batch whose only candidate cannot be migrated does
    // not end the back-fill early.
    let mut calls = Vec::new();
    loop {
        let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(1)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        calls.push(n);
    }
    assert_eq!(calls, [1, 1, 1, 1]);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = ANY ($1) ORDER BY name")
            .bind(&twins)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(names.len(), 4);
    let distinct: std::collections::BTreeSet<String> =
        names.iter().map(|n| n.to_lowercase()).collect();
    assert_eq!(distinct.len(), 4, "{names:?}");
    let (state, message): (String, String) = sqlx::query_as(
        "SELECT sqlstate, message FROM orgkeeper.user_migration_error WHERE user_id = $1",
    )
    .bind(odd)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "55000");
    assert!(
        message.contains("cannot adopt") && message.contains("other members"),
        "{message}"
    );
    let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(100)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "a recorded user is not picked again");
    let err = sqlx::query_scalar::<_, Value>("SELECT orgkeeper.migrate_user($1)")
        .bind(odd)
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "55000", &[]);
}

#[tokio::test]
async fn a_user_locked_by_another_session_is_skipped_by_the_back_fill_and_times_out_alone() {
    let db = TestDb::migrated().await;
    let (held, free) = (Uuid::new_v4(), Uuid::new_v4());
    for u in [held, free] {
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id) VALUES ($1)")
            .bind(u)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    // Another migration session holds the user's user_settings row.
    let mut other = db.connect().await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT 1 FROM orgkeeper.user_settings WHERE user_id = $1 FOR UPDATE")
        .bind(held)
        .execute(&mut other)
        .await
        .unwrap();
    let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut other)
        .await
        .unwrap();

    let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(10)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the free user");
    let started = std::time::Instant::now();
    let err = sqlx::query_scalar::<_, Value>("SELECT orgkeeper.migrate_user($1)")
        .bind(held)
        .fetch_one(&db.pool)
        .await
        .unwrap_err();
    let message = assert_refusal(&err, "55P03", &[&held.to_string()]);
    assert!(
        message.contains(&format!("held by pid {holder} ")),
        "{message}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(29),
        "waited the 30 s lock timeout"
    );
    let migrated: Option<bool> = sqlx::query_scalar(
        "SELECT already_migrated FROM orgkeeper.user_settings WHERE user_id = $1",
    )
    .bind(held)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(migrated, Some(false));
    other.close().await.unwrap();
}

#[tokio::test]
async fn the_cli_back_fills_verifies_and_rolls_back() {
    use orgkeeper::commands::users::{run, UsersCommand};
    let db = TestDb::migrated().await;
    seed_many(&db, 120).await;

    let code = run(
        &db.pool,
        UsersCommand::Migrate {
            user_id: None,
            all: true,
            batch: 25,
            jobs: 3,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.user_settings WHERE NOT already_migrated",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);

    let user: Uuid = sqlx::query_scalar("SELECT user_id FROM orgkeeper.user_settings LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Actions still pending: verification fails with exit status 1.
    #[derive(clap::Parser)]
    struct Users {
        #[command(subcommand)]
        command: UsersCommand,
    }
    let verify = <Users as clap::Parser>::parse_from(["users", "verify", &user.to_string()]);
    let code = run(&db.pool, verify.command).await.unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::from(1))
    );
    // A refusal is reported, not raised: a member joined the personal org.
    let other = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1)")
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $2, orgkeeper.role_id('member'))")
        .bind(user)
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    let code = run(&db.pool, UsersCommand::Rollback { user_id: user })
        .await
        .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::from(1))
    );
    sqlx::query("DELETE FROM orgkeeper.org_member WHERE user_id = $1")
        .bind(other)
        .execute(&db.pool)
        .await
        .unwrap();
    let code = run(&db.pool, UsersCommand::Rollback { user_id: user })
        .await
        .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
    let code = run(
        &db.pool,
        UsersCommand::Migrate {
            user_id: Some(user),
            all: false,
            batch: 1000,
            jobs: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
    let code = run(
        &db.pool,
        UsersCommand::Migrate {
            user_id: Some(Uuid::new_v4()),
            all: false,
            batch: 1000,
            jobs: 1,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::from(1)),
        "unknown user"
    );
}

#[tokio::test]
async fn a_transient_error_fails_the_back_fill_call_without_recording_the_user_so_the_next_call_migrates_it(
) {
    let db = TestDb::migrated().await;
    let (clean, contended) = (Uuid::new_v4(), Uuid::new_v4());
    for u in [clean, contended] {
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, $1::text || '@example.com')")
            .bind(u)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO orgkeeper.api_keys (user_id, key_hash, name) VALUES ($1, 'h', 'laptop')",
    )
    .bind(contended)
    .execute(&db.pool)
    .await
    .unwrap();

    // A back-fill whose snapshot predates a concurrent change of one user's
    // api key cannot move that key: serialization failure (40001), an error
    // that says nothing about the user.
    let mut a = db.connect().await;
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut a)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM orgkeeper.user_settings")
        .execute(&mut a)
        .await
        .unwrap();
    sqlx::query("UPDATE orgkeeper.api_keys SET name = 'renamed' WHERE user_id = $1")
        .bind(contended)
        .execute(&db.pool)
        .await
        .unwrap();
    let outcome = sqlx::query_scalar::<_, i32>("SELECT orgkeeper.migrate_users(10)")
        .fetch_one(&mut a)
        .await;
    // COMMIT keeps whatever the call recorded (a failed transaction rolls back).
    sqlx::query("COMMIT").execute(&mut a).await.unwrap();
    a.close().await.unwrap();
    let errors: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT user_id, sqlstate FROM orgkeeper.user_migration_error")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        errors.is_empty(),
        "transient errors are not recorded: {errors:?}"
    );
    let err = outcome.expect_err("the back-fill call fails with the transient error");
    assert_refusal(&err, "40001", &[]);

    // The next back-fill (READ COMMITTED, as documented) migrates both.
    let n: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(10)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let (migrated, errors): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orgkeeper.user_settings WHERE already_migrated),
                (SELECT count(*) FROM orgkeeper.user_migration_error)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((migrated, errors), (2, 0));
}

#[tokio::test]
async fn only_transient_sqlstates_are_retried_rather_than_recorded() {
    let db = TestDb::migrated().await;
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT s, orgkeeper.is_transient_sqlstate(s)
           FROM unnest(ARRAY['40001', '40P01', '55P03', '53200', '53100', '57014', '57P01', '58030',
                             '23505', '23514', '22001', '55000', '42501', 'XX000']) AS s",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let transient: Vec<&str> = rows
        .iter()
        .filter(|(_, t)| *t)
        .map(|(s, _)| s.as_str())
        .collect();
    assert_eq!(
        transient,
        ["40001", "40P01", "55P03", "53200", "53100", "57014", "57P01", "58030"]
    );
}

#[tokio::test]
async fn user_migration_follows_the_policy_for_personal_orgs_only_when_the_setting_is_on() {
    let db = TestDb::migrated().await;
    sqlx::query("SELECT orgkeeper.policy_allow('domain', 'allowed.test', 'a DBA')")
        .execute(&db.pool)
        .await
        .unwrap();
    // Setting off (the default): a user outside the policy still gets their
    // personal organization.
    let early = Uuid::new_v4();
    seed_legacy_user(&db, early, "early@evil.test").await;
    assert_eq!(migrate(&db, early).await["status"], "migrated");

    sqlx::query(
        "INSERT INTO orgkeeper.deployment_setting (name, value, set_by) VALUES ('policy_applies_to_personal_orgs', 'on', 'a DBA')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // On: refused for a user the policy does not allow, nothing changed ...
    let eve = Uuid::new_v4();
    seed_legacy_user(&db, eve, "eve@evil.test").await;
    let before = (snapshot(&db, eve).await, footprint(&db).await);
    let err = sqlx::query("SELECT orgkeeper.migrate_user($1)")
        .bind(eve)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(
        &err,
        "42501",
        &[&format!(
            "user {eve} may not create a personal organization"
        )],
    );
    assert_eq!((snapshot(&db, eve).await, footprint(&db).await), before);
    // ... the back-fill records them and goes on ...
    let ada = Uuid::new_v4();
    seed_legacy_user(&db, ada, "ada@allowed.test").await;
    // (whose address the identity provider has verified)
    sqlx::query("INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, 'ada@allowed.test', true)")
        .bind(ada)
        .execute(&db.pool)
        .await
        .unwrap();
    let migrated: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(10)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(migrated, 1);
    let recorded: String = sqlx::query_scalar(
        "SELECT sqlstate FROM orgkeeper.user_migration_error WHERE user_id = $1",
    )
    .bind(eve)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded, "42501");
    let kind: String = sqlx::query_scalar("SELECT kind FROM orgkeeper.org WHERE id = $1")
        .bind(ada)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kind, "personal");
}

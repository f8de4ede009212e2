//! Stories of the external half of user migration: the daemon moves a
//! legacy user's LiteLLM budget and keys into their personal org's team,
//! tags their Stripe customer, re-encrypts their legacy secrets — once,
//! whatever crashes — and reverses all of it on rollback.

mod common;

use common::{daemon_config, daemon_settings, wait_until, TestDaemon, TestDb};
use orgkeeper::litellm::{Faults, LiteLlmSimulator};
use orgkeeper::secrets::{Keyring, Place};
use orgkeeper::stripe::StripeSimulator;
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// The pre-organization application's shared LiteLLM team (ORGKEEPER_LEGACY_TEAM_ID).
const LEGACY_TEAM: &str = "legacy-shared-team";

struct World {
    db: TestDb,
    litellm: LiteLlmSimulator,
    stripe: StripeSimulator,
    key: SecretString,
    legacy: SecretString,
}

impl World {
    /// A database, both simulators (LiteLLM with the pre-organization
    /// application's shared team), keys.
    async fn new() -> World {
        let w = World {
            db: TestDb::migrated().await,
            litellm: LiteLlmSimulator::start_local().await.unwrap(),
            stripe: StripeSimulator::start_local().await.unwrap(),
            key: orgkeeper::secrets::generate_key(),
            legacy: orgkeeper::secrets::generate_key(),
        };
        w.admin()
            .create_team(&orgkeeper::litellm::NewTeam {
                team_id: LEGACY_TEAM,
                team_alias: "OpenHands legacy",
                max_budget: None,
                models: &[],
                metadata: serde_json::json!({}),
            })
            .await
            .unwrap();
        w
    }

    /// A LiteLLM client with the master key, to arrange the proxy's state.
    fn admin(&self) -> orgkeeper::litellm::LiteLlmClient {
        orgkeeper::litellm::LiteLlmClient::new(orgkeeper::litellm::LiteLlmConfig::new(
            self.litellm.base_url(),
            self.litellm.master_key_secret(),
        ))
        .unwrap()
    }

    fn keyring(&self) -> Keyring {
        Keyring::new(&self.key, &[], Some(&self.legacy)).unwrap()
    }

    fn daemon(&self, worker: &str) -> TestDaemon {
        let mut config = daemon_config(
            &self.db.url,
            &self.litellm,
            &self.key,
            daemon_settings(worker, Duration::from_secs(1)),
        );
        config.keyring = self.keyring();
        config.litellm.provisioning.legacy_team_id = Some(LEGACY_TEAM.into());
        config.stripe = Some(orgkeeper::stripe::StripeConfig {
            base_url: self.stripe.base_url(),
            api_key: SecretString::from(self.stripe.api_key()),
            timeout: Duration::from_secs(10),
        });
        TestDaemon::start(config)
    }

    /// A legacy user with a LiteLLM budget, two personal keys, a Stripe
    /// customer and legacy-encrypted credentials. Returns (user, customer).
    async fn legacy_user(
        &self,
        max_budget: Option<f64>,
        spend: f64,
        version: i32,
        margin: Option<f64>,
    ) -> (Uuid, String) {
        let user = Uuid::new_v4();
        let email = format!("{}@example.com", &user.simple().to_string()[..8]);
        self.litellm.seed_user(
            &user.to_string(),
            Some(&email),
            max_budget,
            spend,
            &[
                &format!("sk-personal-a-{}", user.simple()),
                &format!("sk-personal-b-{}", user.simple()),
            ],
        );
        let customer = self
            .stripe
            .seed_customer(Some(&email), &[("user_id", &user.to_string())]);
        let ring = self.keyring();
        // The user's working LiteLLM key, as OpenHands stores it.
        let llm_key = ring
            .encrypt_legacy(&SecretString::from(format!(
                "sk-personal-a-{}",
                user.simple()
            )))
            .unwrap();
        let secret = ring
            .encrypt_legacy(&SecretString::from("github-token-123"))
            .unwrap();
        sqlx::query(
            "INSERT INTO orgkeeper.user_settings (user_id, email, llm_model, llm_api_key, user_version, billing_margin)
             VALUES ($1, $2, 'litellm_proxy/old-model', $3, $4, $5)",
        )
        .bind(user)
        .bind(&email)
        .bind(&llm_key)
        .bind(version)
        .bind(margin)
        .execute(&self.db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO orgkeeper.stripe_customers (user_id, stripe_customer_id) VALUES ($1, $2)",
        )
        .bind(user)
        .bind(&customer)
        .execute(&self.db.pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value) VALUES ($1, 'GITHUB', $2)")
            .bind(user)
            .bind(&secret)
            .execute(&self.db.pool)
            .await
            .unwrap();
        (user, customer)
    }

    async fn migrate(&self, user: Uuid) -> serde_json::Value {
        sqlx::query_scalar("SELECT orgkeeper.migrate_user($1)")
            .bind(user)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn actions_finished(&self) -> bool {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE finished_at IS NULL",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        open == 0
    }

    async fn checks(&self, user: Uuid) -> Vec<(String, bool, String)> {
        sqlx::query_as("SELECT check_name, ok, detail FROM orgkeeper.verify_user_migration($1)")
            .bind(user)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_migrated_user_ends_with_budget_keys_customer_and_secrets_in_their_org() {
    let w = World::new().await;
    let (user, customer) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    let report = w.migrate(user).await;
    assert_eq!(report["status"], "migrated", "{report}");
    let d = w.daemon("w1");
    wait_until(LONG, "the migration's actions to finish", || {
        w.actions_finished()
    })
    .await;
    d.stop().await;

    for (check, ok, detail) in w.checks(user).await {
        assert!(ok, "{check}: {detail}");
    }
    let team = w
        .litellm
        .team(&user.to_string())
        .expect("a team for the personal org");
    assert_eq!(team.max_budget, Some(6.0), "credits = budget - spend");
    assert_eq!(team.members.len(), 1);
    assert_eq!(team.members[0].max_budget_in_team, Some(6.0));
    assert_eq!(team.keys.len(), 2, "the user's keys moved into the team");
    let litellm_user = w.litellm.user(&user.to_string()).unwrap();
    assert_eq!(
        litellm_user.max_budget,
        Some(1_000_000_000.0),
        "user budget set to the unlimited sentinel"
    );

    let tagged = w.stripe.customer(&customer).unwrap();
    assert_eq!(
        tagged.metadata.get("org_id").map(String::as_str),
        Some(user.to_string().as_str())
    );
    assert!(
        !tagged.metadata.contains_key("user_id"),
        "the user tag is cleared"
    );

    let ring = w.keyring();
    let (org_key, secret_id, secret): (String, i64, String) = sqlx::query_as(
        "SELECT o.llm_api_key, s.id, s.secret_value FROM orgkeeper.org o, orgkeeper.custom_secrets s WHERE o.id = $1 AND s.user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    let org_place = Place::new("org", "llm_api_key", user.to_string());
    assert_eq!(
        ring.decrypt(&org_place, &org_key).unwrap().expose_secret(),
        format!("sk-personal-a-{}", user.simple())
    );
    let member_key: String = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        ring.decrypt(&Place::member_key(user, user), &member_key)
            .unwrap()
            .expose_secret(),
        format!("sk-personal-a-{}", user.simple()),
        "a working legacy key is kept"
    );
    let secret_place = Place::new("custom_secrets", "secret_value", secret_id.to_string());
    assert_eq!(
        ring.decrypt(&secret_place, &secret)
            .unwrap()
            .expose_secret(),
        "github-token-123"
    );
    assert!(
        ring.decrypt(&secret_place, &org_key).is_err(),
        "re-encrypted values are bound to their row and column"
    );
    let status: String =
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(status, "active");
}

#[tokio::test]
async fn budget_rules_zero_is_migrated_null_and_sentinel_are_not_and_the_margin_applies_below_version_4(
) {
    let w = World::new().await;
    let cases = [
        (Some(0.0), 0.0, 5, None, Some(0.0)),
        (None, 3.0, 5, None, None),
        (Some(1_000_000_000.0), 3.0, 5, None, None),
        (Some(10.0), 4.0, 3, Some(2.0), Some(12.0)),
        (Some(10.0), 4.0, 4, Some(2.0), Some(6.0)),
        (Some(10.0), 4.0, 3, Some(0.0), Some(6.0)),
        (Some(10.0), 4.0, 3, Some(1.0), Some(6.0)),
    ];
    let mut users = vec![];
    for (budget, spend, version, margin, _) in cases {
        let (user, _) = w.legacy_user(budget, spend, version, margin).await;
        w.migrate(user).await;
        users.push(user);
    }
    let d = w.daemon("w1");
    wait_until(LONG, "all actions to finish", || w.actions_finished()).await;
    d.stop().await;
    for ((budget, spend, version, margin, credits), user) in cases.iter().zip(&users) {
        let team = w.litellm.team(&user.to_string()).unwrap();
        let case = format!("budget {budget:?} spend {spend} v{version} margin {margin:?}");
        assert_eq!(team.max_budget, *credits, "{case}");
        let result: serde_json::Value = sqlx::query_scalar(
            "SELECT result FROM orgkeeper.pending_external_actions WHERE user_id = $1 AND kind = 'litellm.migrate_user'",
        )
        .bind(user)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
        assert_eq!(result["already_migrated"], credits.is_none(), "{case}");
        let at_proxy = w.litellm.user(&user.to_string()).unwrap().max_budget;
        if credits.is_some() {
            assert_eq!(
                at_proxy,
                Some(1_000_000_000.0),
                "{case}: the user is unlimited"
            );
        } else {
            assert_eq!(
                at_proxy, *budget,
                "{case}: already migrated, the proxy is not touched"
            );
            assert!(
                w.litellm
                    .requests("user/update")
                    .iter()
                    .all(|b| b["user_id"] != user.to_string()),
                "{case}: no /user/update for an already-migrated user"
            );
        }
    }
}

#[tokio::test]
async fn a_user_unknown_to_litellm_fails_for_good_and_a_retry_finishes_once_fixed() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    w.litellm.delete_user(&user.to_string());
    w.migrate(user).await;
    let d = w.daemon("w1");
    wait_until(LONG, "the actions to finish", || w.actions_finished()).await;
    let (status, error): (String, String) = sqlx::query_as(
        "SELECT status, last_error FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.migrate_user'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(status, "failed");
    assert!(
        error.contains(&format!("LiteLLM has no user {user}")),
        "{error}"
    );
    let org_status: String =
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(org_status, "failed");
    assert!(
        w.litellm.team(&user.to_string()).is_none(),
        "nothing was made"
    );
    let checks = w.checks(user).await;
    let budget = checks
        .iter()
        .find(|c| c.0 == "litellm_budget_unlimited")
        .unwrap();
    assert!(
        !budget.1 && budget.2.contains("LiteLLM has no user"),
        "{budget:?}"
    );

    // Fixed at the proxy, the operator retries.
    w.litellm
        .seed_user(&user.to_string(), None, Some(10.0), 4.0, &[]);
    let id: i64 = sqlx::query_scalar(
        "SELECT id FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.migrate_user'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT orgkeeper.retry_action($1)")
        .bind(id)
        .execute(&w.db.pool)
        .await
        .unwrap();
    wait_until(LONG, "the retry to finish", || w.actions_finished()).await;
    d.stop().await;
    for (check, ok, detail) in w.checks(user).await {
        assert!(ok, "{check}: {detail}");
    }
    assert_eq!(
        w.litellm.team(&user.to_string()).unwrap().max_budget,
        Some(6.0)
    );
}

/// Kills the daemon right after migration step `step`, then lets another
/// finish: the budget must be counted exactly once.
async fn kill_during_migration(step: usize) {
    const STEPS: [&str; 4] = ["team/new", "user/update", "team/member_add", "key/list"];
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    w.migrate(user).await;
    w.litellm.set_faults(Faults {
        fail: vec![(STEPS[step].to_string(), 503)],
        ..Faults::default()
    });
    let first = w.daemon("doomed");
    wait_until(LONG, "the step to succeed", || async {
        w.litellm.stats().succeeded(STEPS[step - 1]) >= 1
    })
    .await;
    first.kill().await;
    w.litellm.set_faults(Faults::default());
    let second = w.daemon("rescuer");
    wait_until(LONG, "the migration to finish", || w.actions_finished()).await;
    second.stop().await;

    let team = w.litellm.team(&user.to_string()).unwrap();
    assert_eq!(team.max_budget, Some(6.0), "credits counted once");
    assert_eq!(team.members.len(), 1);
    assert_eq!(team.members[0].max_budget_in_team, Some(6.0));
    assert_eq!(team.keys.len(), 2);
    assert_eq!(
        w.litellm.stats().teams,
        2,
        "the personal team, besides the legacy one"
    );
    assert_eq!(
        w.litellm.stats().calls("user/info"),
        1,
        "the budget was read once, before anything changed"
    );
}

#[tokio::test]
async fn killed_after_team_creation_the_budget_counts_once() {
    kill_during_migration(1).await;
}

#[tokio::test]
async fn killed_after_the_user_went_unlimited_the_budget_counts_once() {
    kill_during_migration(2).await;
}

#[tokio::test]
async fn killed_after_the_membership_the_budget_counts_once() {
    kill_during_migration(3).await;
}

#[tokio::test]
async fn rollback_returns_budget_keys_and_customer_to_the_user() {
    let w = World::new().await;
    let (user, customer) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    w.migrate(user).await;
    let d = w.daemon("w1");
    wait_until(LONG, "migration to finish", || w.actions_finished()).await;

    let report: serde_json::Value =
        sqlx::query_scalar("SELECT orgkeeper.rollback_user_migration($1)")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(report["status"], "rolled_back", "{report}");
    wait_until(LONG, "the reversals to finish", || w.actions_finished()).await;
    d.stop().await;

    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, status FROM orgkeeper.pending_external_actions WHERE status NOT IN ('done', 'cancelled')",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    let errors: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT last_error FROM orgkeeper.pending_external_actions WHERE status = 'failed'",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert!(failed.is_empty(), "{failed:?} {errors:?}");
    assert!(
        w.litellm.team(&user.to_string()).is_none(),
        "the org's team is deleted"
    );
    let keys = w.litellm.user_keys(&user.to_string());
    assert_eq!(keys.len(), 2, "the user's keys survived the team deletion");
    assert!(keys.iter().all(|k| k.team_id.is_none()));
    let restored = w.litellm.user(&user.to_string()).unwrap();
    assert_eq!(
        (restored.max_budget, restored.spend),
        (Some(6.0), 0.0),
        "what was left of the budget in the team (10 - 4 spent) is the user's again"
    );
    assert!(
        restored.teams.iter().any(|t| t == LEGACY_TEAM),
        "back in the legacy team"
    );
    let c = w.stripe.customer(&customer).unwrap();
    assert_eq!(
        c.metadata.get("user_id").map(String::as_str),
        Some(user.to_string().as_str())
    );
    assert!(!c.metadata.contains_key("org_id"));
}

/// Where each of the user's keys is at LiteLLM: token -> team.
fn key_teams(w: &World, user: Uuid) -> std::collections::BTreeMap<String, Option<String>> {
    w.litellm
        .user_keys(&user.to_string())
        .into_iter()
        .map(|k| (k.token, k.team_id))
        .collect()
}

#[tokio::test]
async fn migration_moves_only_the_users_own_legacy_keys_and_rollback_puts_each_back() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    let admin = w.admin();
    admin
        .create_team(&orgkeeper::litellm::NewTeam {
            team_id: "someone-elses-team",
            team_alias: "someone else's",
            max_budget: None,
            models: &[],
            metadata: serde_json::json!({}),
        })
        .await
        .unwrap();
    // A key in the legacy shared team, and one in a team that is neither
    // the legacy team nor orgkeeper's.
    for (team, key) in [
        (LEGACY_TEAM, "sk-in-legacy-team-0001"),
        ("someone-elses-team", "sk-elsewhere-0001"),
    ] {
        admin
            .generate_key(&orgkeeper::litellm::NewKey {
                key: &SecretString::from(key),
                key_alias: &format!("{team} key"),
                team_id: team,
                user_id: &user.to_string(),
                models: &[],
                metadata: serde_json::json!({}),
            })
            .await
            .unwrap();
    }
    // The user already owns a team organization, with orgkeeper's key in it.
    sqlx::query(
        "INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'owner-of-a-team@example.com')",
    )
    .bind(user)
    .execute(&w.db.pool)
    .await
    .unwrap();
    let team_org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Their team', $1)")
        .bind(user)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    let d = w.daemon("w1");
    wait_until(LONG, "the team org to be provisioned", || {
        w.actions_finished()
    })
    .await;
    let before = key_teams(&w, user);
    assert_eq!(
        before.len(),
        5,
        "two personal, legacy team, elsewhere, team org: {before:?}"
    );
    let team_org_keys: Vec<String> = before
        .iter()
        .filter(|(_, t)| t.as_deref() == Some(team_org.to_string().as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(team_org_keys.len(), 1);

    let report = w.migrate(user).await;
    assert_eq!(report["status"], "migrated", "{report}");
    wait_until(LONG, "the migration to finish", || w.actions_finished()).await;
    let migrated = key_teams(&w, user);
    let personal = Some(user.to_string());
    for (token, team) in &before {
        let now = &migrated[token];
        match team.as_deref() {
            None | Some(LEGACY_TEAM) => assert_eq!(now, &personal, "legacy key {token} moved"),
            _ => assert_eq!(now, team, "key {token} in {team:?} untouched"),
        }
    }
    let moved: serde_json::Value = sqlx::query_scalar(
        "SELECT progress -> 'moved_keys' FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.migrate_user'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(moved.as_array().unwrap().len(), 3, "{moved}");

    let report: serde_json::Value =
        sqlx::query_scalar("SELECT orgkeeper.rollback_user_migration($1)")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(report["status"], "rolled_back", "{report}");
    wait_until(LONG, "the rollback to finish", || w.actions_finished()).await;
    d.stop().await;
    assert_eq!(
        key_teams(&w, user),
        before,
        "every key is back where it was; the team org's key never moved"
    );
    assert!(w.litellm.team(&team_org.to_string()).is_some());
}

#[tokio::test]
async fn an_invalid_legacy_key_is_replaced_by_a_managed_one_and_a_foreign_providers_key_is_kept() {
    let w = World::new().await;
    let ring = w.keyring();
    let (invalid, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    let (own_provider, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    let revoked = ring
        .encrypt_legacy(&SecretString::from("sk-revoked-long-ago-0001"))
        .unwrap();
    let providers = ring
        .encrypt_legacy(&SecretString::from("sk-ant-users-own-provider"))
        .unwrap();
    for (user, key, base_url) in [
        (invalid, &revoked, None),
        (own_provider, &providers, Some("https://api.anthropic.com")),
    ] {
        sqlx::query("UPDATE orgkeeper.user_settings SET llm_api_key = $2, llm_base_url = $3 WHERE user_id = $1")
            .bind(user)
            .bind(key)
            .bind(base_url)
            .execute(&w.db.pool)
            .await
            .unwrap();
        w.migrate(user).await;
    }
    let d = w.daemon("w1");
    wait_until(LONG, "the migrations to finish", || w.actions_finished()).await;
    d.stop().await;

    let (pool, ring) = (&w.db.pool, &ring);
    let member_key = |user: Uuid| async move {
        let ct: String = sqlx::query_scalar(
            "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
        )
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap();
        ring.decrypt(&Place::member_key(user, user), &ct)
            .unwrap()
            .expose_secret()
            .to_string()
    };
    let replaced = member_key(invalid).await;
    assert_ne!(replaced, "sk-revoked-long-ago-0001");
    let at_proxy = w
        .litellm
        .key(&replaced)
        .expect("the new key is at the proxy");
    assert_eq!(
        at_proxy.team_id.as_deref(),
        Some(invalid.to_string().as_str())
    );
    assert_eq!(
        member_key(own_provider).await,
        "sk-ant-users-own-provider",
        "a key for another provider is neither checked nor replaced"
    );
    let results: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT result FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.verify_key' ORDER BY id",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(results[0]["valid"], false);
    assert_eq!(results[0]["regenerated"], true);
    assert!(results[1]["skipped"]
        .as_str()
        .unwrap()
        .contains("api.anthropic.com"));
    for user in [invalid, own_provider] {
        for (check, ok, detail) in w.checks(user).await {
            assert!(ok, "{check}: {detail}");
        }
    }
}

#[tokio::test]
async fn verify_live_catches_a_team_deleted_behind_orgkeepers_back() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    w.migrate(user).await;
    let d = w.daemon("w1");
    wait_until(LONG, "the migration to finish", || w.actions_finished()).await;
    d.stop().await;
    let verify = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(["users", "verify", &user.to_string(), "--live"])
            .env("DATABASE_URL", &w.db.url)
            .env("LITELLM_BASE_URL", w.litellm.base_url())
            .env("LITELLM_MASTER_KEY", w.litellm.master_key())
            .env("STRIPE_BASE_URL", w.stripe.base_url())
            .env("STRIPE_API_KEY", w.stripe.api_key())
            .env("ORGKEEPER_SECRET_KEY", w.key.expose_secret())
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = verify().await;
    assert_eq!(code, 0, "{out}");
    for check in [
        "live_litellm_user_unlimited",
        "live_litellm_team",
        "live_litellm_user_in_team",
        "live_litellm_member_key",
        "live_stripe_customer",
    ] {
        assert!(out.contains(check), "{check} missing: {out}");
    }

    w.admin().delete_team(&user.to_string()).await.unwrap();
    let (code, out) = verify().await;
    assert_eq!(code, 1, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("live_litellm_team "))
        .unwrap();
    assert!(
        line.contains("FAIL") && line.contains("does not exist at LiteLLM"),
        "{out}"
    );
    assert!(out
        .lines()
        .any(|l| l.starts_with("live_litellm_member_key") && l.contains("FAIL")));
}

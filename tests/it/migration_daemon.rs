//! Stories of the external half of user migration: the daemon moves a
//! legacy user's LiteLLM budget and keys into their personal org's team,
//! tags their Stripe customer, re-encrypts their legacy secrets (OpenHands'
//! Fernet tokens, or plaintext) — once, whatever crashes — and reverses all
//! of it on rollback.

use crate::support::{daemon_config, daemon_settings, wait_until, TestDaemon, TestDb};
use orgkeeper::legacy_data::{self, LegacyValues};
use orgkeeper::legacy_secrets::LegacyKey;
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
    /// The legacy application's jwt_secret (ORGKEEPER_LEGACY_JWT_SECRET).
    jwt_secret: SecretString,
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
            jwt_secret: SecretString::from(format!("openhands-jwt-{}", Uuid::new_v4())),
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
        Keyring::new(&self.key, &[], Some(&self.jwt_secret)).unwrap()
    }

    /// A credential as the legacy application stores it.
    fn openhands_encrypt(&self, plaintext: &str) -> String {
        LegacyKey::from_jwt_secret(&self.jwt_secret).encrypt(&SecretString::from(plaintext))
    }

    fn daemon(&self, worker: &str) -> TestDaemon {
        self.daemon_with(worker, self.keyring())
    }

    fn daemon_with(&self, worker: &str, keyring: Keyring) -> TestDaemon {
        let mut config = daemon_config(
            &self.db.url,
            &self.litellm,
            &self.key,
            daemon_settings(worker, Duration::from_secs(1)),
        );
        config.keyring = keyring;
        config.litellm.provisioning.legacy_team_id = Some(LEGACY_TEAM.into());
        config.stripe = Some(orgkeeper::stripe::StripeConfig {
            base_url: self.stripe.base_url(),
            api_key: SecretString::from(self.stripe.api_key()),
            timeout: Duration::from_secs(10),
        });
        TestDaemon::start(config)
    }

    /// A legacy user with a LiteLLM budget, two personal keys, a Stripe
    /// customer and credentials as OpenHands stores them: the LLM key and a
    /// custom secret as Fernet tokens, the search key in plaintext (an older
    /// row). Returns (user, customer).
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
        // The user's working LiteLLM key, as OpenHands stores it.
        let llm_key = self.openhands_encrypt(&format!("sk-personal-a-{}", user.simple()));
        let secret = self.openhands_encrypt("github-token-123");
        sqlx::query(
            "INSERT INTO orgkeeper.user_settings (user_id, email, llm_model, llm_api_key, search_api_key, user_version, billing_margin)
             VALUES ($1, $2, 'litellm_proxy/old-model', $3, 'tvly-plaintext-search-key', $4, $5)",
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

    async fn rollback(&self, user: Uuid) -> serde_json::Value {
        sqlx::query_scalar("SELECT orgkeeper.rollback_user_migration($1)")
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
    let (org_key, search_key, secret_id, secret): (Option<String>, String, i64, String) = sqlx::query_as(
        "SELECT o.llm_api_key, o.search_api_key, s.id, s.secret_value FROM orgkeeper.org o, orgkeeper.custom_secrets s WHERE o.id = $1 AND s.user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        org_key, None,
        "the user's LiteLLM key is their membership's, never the organization's"
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
    let search_place = Place::new("org", "search_api_key", user.to_string());
    assert_eq!(
        ring.decrypt(&search_place, &search_key)
            .unwrap()
            .expose_secret(),
        "tvly-plaintext-search-key",
        "a plaintext legacy value passes through and is encrypted at its place"
    );
    let secret_place = Place::new("custom_secrets", "secret_value", secret_id.to_string());
    assert_eq!(
        ring.decrypt(&secret_place, &secret)
            .unwrap()
            .expose_secret(),
        "github-token-123"
    );
    assert!(
        ring.decrypt(&secret_place, &search_key).is_err(),
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
    // The order of the migration's LiteLLM calls after user/info; the
    // action fails at STEPS[step] once STEPS[step - 1] has succeeded.
    const STEPS: [&str; 5] = [
        "key/list",
        "team/new",
        "user/update",
        "team/member_add",
        "key/update",
    ];
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
    kill_during_migration(2).await;
}

#[tokio::test]
async fn killed_after_the_user_went_unlimited_the_budget_counts_once() {
    kill_during_migration(3).await;
}

#[tokio::test]
async fn killed_after_the_membership_the_budget_counts_once() {
    kill_during_migration(4).await;
}

#[tokio::test]
async fn rollback_returns_budget_keys_and_customer_to_the_user() {
    let w = World::new().await;
    let (user, customer) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    w.migrate(user).await;
    let d = w.daemon("w1");
    wait_until(LONG, "migration to finish", || w.actions_finished()).await;

    let report = w.rollback(user).await;
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

    let report = w.rollback(user).await;
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
    let revoked = w.openhands_encrypt("sk-revoked-long-ago-0001");
    let providers = w.openhands_encrypt("sk-ant-users-own-provider");
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
    let result = |user: Uuid| async move {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT result FROM orgkeeper.pending_external_actions
              WHERE kind = 'litellm.verify_key' AND user_id = $1",
        )
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let checked = result(invalid).await;
    assert_eq!(checked["valid"], false, "{checked}");
    assert_eq!(checked["regenerated"], true, "{checked}");
    let kept = result(own_provider).await;
    assert!(
        kept["skipped"]
            .as_str()
            .unwrap()
            .contains("api.anthropic.com"),
        "{kept}"
    );
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

/// The secret columns a migrated user's values end in, as (place, value).
async fn stored_secrets(w: &World, user: Uuid) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT 'org.' || c, orgkeeper.read_secret('org', c, jsonb_build_object('id', $1::uuid))
           FROM unnest(ARRAY['llm_api_key', 'llm_api_key_for_byor', 'search_api_key', 'sandbox_api_key']) c
         UNION ALL
         SELECT 'org_member.llm_api_key', m.llm_api_key FROM orgkeeper.org_member m WHERE m.org_id = $1 AND m.user_id = $1
         UNION ALL
         SELECT 'custom_secrets.secret_value/' || s.id, s.secret_value FROM orgkeeper.custom_secrets s WHERE s.user_id = $1
         ORDER BY 1",
    )
    .bind(user)
    .fetch_all(&w.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_wrong_legacy_jwt_secret_fails_the_reencryption_naming_user_and_fields_and_writes_nothing(
) {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    assert_eq!(w.migrate(user).await["status"], "migrated");
    let before = stored_secrets(&w, user).await;
    assert!(before.iter().all(|(_, v)| v
        .as_deref()
        .is_none_or(|v| !Keyring::is_orgkeeper_format(v))));

    let wrong = Keyring::new(
        &w.key,
        &[],
        Some(&SecretString::from("not-the-openhands-jwt-secret")),
    )
    .unwrap();
    let d = w.daemon_with("wrong-secret", wrong);
    wait_until(LONG, "the migration's actions to finish", || {
        w.actions_finished()
    })
    .await;
    d.stop().await;

    let (id, status, attempts, error): (i64, String, i32, String) = sqlx::query_as(
        "SELECT id, status, attempts, last_error FROM orgkeeper.pending_external_actions
          WHERE user_id = $1 AND kind = 'secrets.reencrypt'",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(status, "failed", "{error}");
    assert_eq!(attempts, 1, "a wrong secret is permanent: not retried");
    assert!(error.contains(&user.to_string()), "names the user: {error}");
    for field in [
        "org_member.llm_api_key",
        "custom_secrets.secret_value",
        "ORGKEEPER_LEGACY_JWT_SECRET",
    ] {
        assert!(error.contains(field), "names {field}: {error}");
    }
    assert!(
        !error.contains("search_api_key"),
        "the plaintext search key was readable: {error}"
    );
    assert!(
        !error.contains("sk-users-own") && !error.contains("github-token"),
        "{error}"
    );
    assert_eq!(
        stored_secrets(&w, user).await,
        before,
        "nothing was written, not even the readable plaintext"
    );
    let checks = w.checks(user).await;
    let (_, ok, detail) = checks
        .iter()
        .find(|(c, _, _)| c == "no_legacy_ciphertext")
        .unwrap();
    assert!(!ok, "{detail}");
    let others_done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions
          WHERE user_id = $1 AND kind <> 'secrets.reencrypt' AND status = 'done'",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(others_done, 2, "LiteLLM and Stripe halves are unaffected");

    // With the right secret, a retry re-encrypts everything.
    sqlx::query("SELECT orgkeeper.retry_action($1)")
        .bind(id)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let d = w.daemon("right-secret");
    wait_until(LONG, "the retried action to finish", || {
        w.actions_finished()
    })
    .await;
    d.stop().await;
    for (check, ok, detail) in w.checks(user).await {
        assert!(ok, "{check}: {detail}");
    }
    let member_key: String = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        w.keyring()
            .decrypt(&Place::member_key(user, user), &member_key)
            .unwrap()
            .expose_secret(),
        format!("sk-personal-a-{}", user.simple())
    );
}

#[tokio::test]
async fn generated_openhands_users_migrate_end_to_end_and_every_credential_reads_as_openhands_would(
) {
    let w = World::new().await;
    let n = 30;
    let values = LegacyValues::new(&w.jwt_secret);
    legacy_data::generate(&w.db.pool, 1, n, &values, None)
        .await
        .unwrap();
    let users = legacy_data::users(&w.db.pool, 1, n).await.unwrap();
    assert_eq!(users.len(), n as usize);
    legacy_data::seed_simulators(&w.db.pool, &users, &w.litellm, &w.stripe)
        .await
        .unwrap();

    // The generator covers what a real deployment holds.
    let (versions, margins, urls, models, no_email): (Vec<i32>, Vec<String>, i64, i64, i64) =
        sqlx::query_as(
            "SELECT array_agg(DISTINCT user_version ORDER BY user_version),
                    array_agg(DISTINCT coalesce(billing_margin::text, 'NULL') ORDER BY coalesce(billing_margin::text, 'NULL')),
                    count(DISTINCT coalesce(llm_base_url, 'NULL')), count(DISTINCT coalesce(llm_model, 'NULL')),
                    count(*) FILTER (WHERE email IS NULL)
               FROM orgkeeper.user_settings",
        )
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(margins, ["0", "1", "2", "NULL"]);
    assert!(urls >= 3 && models >= 4 && no_email >= 1);
    let budgets: Vec<_> = users
        .iter()
        .map(|u| legacy_data::litellm_account(u.number).0)
        .collect();
    for b in [None, Some(0.0), Some(1_000_000_000.0)] {
        assert!(budgets.contains(&b), "a LiteLLM budget {b:?}");
    }

    // What OpenHands reads in each credential, keyed by where it will live.
    let legacy = LegacyKey::from_jwt_secret(&w.jwt_secret);
    let stored: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT 'org', c, s.user_id::text, v
           FROM orgkeeper.user_settings s,
                LATERAL (VALUES ('search_api_key', s.search_api_key),
                                ('sandbox_api_key', s.sandbox_api_key)) AS x(c, v)
          WHERE v IS NOT NULL
         UNION ALL
         -- A user with custom settings keeps the BYOR key on the membership.
         SELECT CASE WHEN orgkeeper.has_custom_llm_settings(s) THEN 'org_member' ELSE 'org' END,
                'llm_api_key_for_byor',
                CASE WHEN orgkeeper.has_custom_llm_settings(s) THEN s.user_id || '/' || s.user_id ELSE s.user_id::text END,
                s.llm_api_key_for_byor
           FROM orgkeeper.user_settings s WHERE s.llm_api_key_for_byor IS NOT NULL
         UNION ALL
         SELECT 'org_member', 'llm_api_key', s.user_id || '/' || s.user_id, s.llm_api_key
           FROM orgkeeper.user_settings s WHERE s.llm_api_key IS NOT NULL
         UNION ALL
         SELECT 'custom_secrets', 'secret_value', id::text, secret_value FROM orgkeeper.custom_secrets WHERE secret_value IS NOT NULL
         UNION ALL
         SELECT 'gitlab_webhook', 'webhook_secret', id::text, webhook_secret FROM orgkeeper.gitlab_webhook WHERE webhook_secret IS NOT NULL",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(t, c, k, v): (String, String, String, String)| (format!("{t}.{c}:{k}"), t, v))
    .collect();
    let mut expected = std::collections::BTreeMap::new();
    let mut plaintexts = 0;
    for (place, _, value) in &stored {
        let read = legacy.decrypt(value).expect(place);
        plaintexts += usize::from(read.was_plaintext());
        expected.insert(place.clone(), read.secret().expose_secret().to_string());
    }
    assert!(
        plaintexts > 0 && plaintexts < stored.len() / 2,
        "{plaintexts} plaintexts"
    );

    let migrated: i32 = sqlx::query_scalar("SELECT orgkeeper.migrate_users(100)")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(migrated, n as i32);
    let d = w.daemon("w1");
    wait_until(LONG, "every migration's actions to finish", || {
        w.actions_finished()
    })
    .await;
    d.stop().await;
    let not_done: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT kind, status, last_error FROM orgkeeper.pending_external_actions WHERE status <> 'done'",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert!(not_done.is_empty(), "{not_done:?}");
    for u in &users {
        for (check, ok, detail) in w.checks(u.user_id).await {
            assert!(ok, "user {}: {check}: {detail}", u.number);
        }
    }

    // Every credential is now orgkeeper's, bound to its place, and reads as
    // OpenHands read it.
    let ring = w.keyring();
    for (place, table, _) in &stored {
        let (column_key, row) = place.split_once(':').unwrap();
        let column = column_key.split_once('.').unwrap().1;
        let now: String = sqlx::query_scalar(
            "SELECT orgkeeper.read_secret($1, $2, CASE WHEN $1 = 'org_member'
                        THEN jsonb_build_object('org_id', split_part($3, '/', 1), 'user_id', split_part($3, '/', 2))
                        ELSE jsonb_build_object('id', $3::text) END)",
        )
        .bind(table)
        .bind(column)
        .bind(row)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
        let at = Place::new(table, column, row);
        let read = ring.decrypt(&at, &now).expect(place);
        if place.starts_with("org_member.llm_api_key:") && read.expose_secret() != expected[place] {
            // A member key the proxy does not know is replaced by a managed
            // key in the personal team (litellm.verify_key).
            assert!(
                !w.litellm.has_key(&expected[place]),
                "{place}: a working key was replaced"
            );
            let replacement = w.litellm.key(read.expose_secret()).expect(place);
            assert_eq!(
                replacement.team_id.as_deref(),
                Some(row.split('/').next().unwrap()),
                "{place}"
            );
        } else {
            assert_eq!(read.expose_secret(), expected[place], "{place}");
        }
    }
}

#[tokio::test]
async fn a_legacy_users_first_login_through_create_personal_org_migrates_them() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    let mut app = crate::support::app(&w.db, Some(user)).await;
    let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
        .bind(user)
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(org, user);
    let migrated: bool = sqlx::query_scalar(
        "SELECT already_migrated FROM orgkeeper.user_settings WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert!(migrated, "the first login migrated the user");
    let d = w.daemon("w1");
    wait_until(LONG, "the migration to finish", || w.actions_finished()).await;
    d.stop().await;
    for (check, ok, detail) in w.checks(user).await {
        assert!(ok, "{check}: {detail}");
    }
    assert_eq!(
        w.litellm.team(&user.to_string()).unwrap().max_budget,
        Some(6.0),
        "the legacy credits, counted once"
    );
}

#[tokio::test]
async fn a_user_whose_personal_org_exists_is_migrated_into_it_and_rolled_back_to_it() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    // The personal org was made at first login by something else than
    // orgkeeper's create_personal_org (e.g. before the legacy row was loaded).
    sqlx::query("UPDATE orgkeeper.user_settings SET max_iterations = 42 WHERE user_id = $1")
        .bind(user)
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'early@example.com')")
        .bind(user)
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org (name, kind, created_by, llm_model) VALUES ('Mine', 'personal', $1, 'litellm_proxy/chosen')")
        .bind(user)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let d = w.daemon("w1");
    wait_until(LONG, "the personal org to be provisioned", || {
        w.actions_finished()
    })
    .await;
    let key_before: String = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(w.litellm.team(&user.to_string()).unwrap().max_budget, None);

    let report = w.migrate(user).await;
    assert_eq!(report["status"], "migrated", "{report}");
    wait_until(LONG, "the migration to finish", || w.actions_finished()).await;
    for (check, ok, detail) in w.checks(user).await {
        assert!(ok, "{check}: {detail}");
    }
    let (iterations, model): (Option<i32>, String) =
        sqlx::query_as("SELECT max_iterations, llm_model FROM orgkeeper.org WHERE id = $1")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(
        iterations,
        Some(42),
        "what the org lacked comes from the legacy row"
    );
    assert_eq!(model, "litellm_proxy/chosen", "what the org had stays");
    let team = w.litellm.team(&user.to_string()).unwrap();
    assert_eq!(
        team.max_budget,
        Some(6.0),
        "the personal team gets the legacy credits"
    );
    assert_eq!(team.members[0].max_budget_in_team, Some(6.0));
    assert_eq!(
        team.keys.len(),
        3,
        "the provisioned key and the two legacy keys"
    );
    let key_after: String = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        key_after, key_before,
        "the member keeps the working key they had"
    );

    let undo = w.rollback(user).await;
    assert_eq!(undo["org"], "restored", "{undo}");
    wait_until(LONG, "the rollback to finish", || w.actions_finished()).await;
    d.stop().await;
    let iterations: Option<i32> =
        sqlx::query_scalar("SELECT max_iterations FROM orgkeeper.org WHERE id = $1")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(
        iterations, None,
        "the adopted org's settings are as they were"
    );
    let team = w
        .litellm
        .team(&user.to_string())
        .expect("the adopted org keeps its team");
    assert_eq!(team.max_budget, None, "the team's budget as it was");
    assert_eq!(team.members.len(), 1, "the user stays in their own team");
    assert_eq!(team.keys.len(), 1, "the legacy keys left it again");
}

#[tokio::test]
async fn a_personal_org_with_other_members_is_not_adopted_and_the_refusal_says_why() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    let other = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'u@example.com'), ($2, 'o@example.com')")
        .bind(user)
        .bind(other)
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orgkeeper.org (name, kind, created_by) VALUES ('Shared', 'personal', $1)",
    )
    .bind(user)
    .execute(&w.db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT orgkeeper.add_member($1, $1, $2, 'member')")
        .bind(user)
        .bind(other)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let err = sqlx::query("SELECT orgkeeper.migrate_user($1)")
        .bind(user)
        .execute(&w.db.pool)
        .await
        .unwrap_err();
    let (code, message) = crate::support::db_error(&err);
    assert_eq!(code, "55000");
    assert!(
        message.contains("cannot adopt")
            && message.contains("other members")
            && message.contains(&other.to_string()),
        "{message}"
    );
    let migrated: bool = sqlx::query_scalar(
        "SELECT already_migrated FROM orgkeeper.user_settings WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert!(!migrated, "nothing changed");
}

#[tokio::test]
async fn a_user_with_custom_settings_keeps_them_on_the_membership_and_a_default_user_inherits() {
    let w = World::new().await;
    sqlx::query(
        "INSERT INTO orgkeeper.deployment_setting (name, value, set_by) VALUES ('litellm_base_url', $1, 'test')",
    )
    .bind(w.litellm.base_url())
    .execute(&w.db.pool)
    .await
    .unwrap();
    let (custom, _) = w.legacy_user(Some(10.0), 4.0, 3, None).await;
    let (default, _) = w.legacy_user(Some(10.0), 4.0, 3, None).await;
    let byor = w.openhands_encrypt("sk-ant-own-byor-key");
    sqlx::query(
        "UPDATE orgkeeper.user_settings
            SET llm_model = 'anthropic/claude-3-opus', llm_base_url = 'https://api.anthropic.com/',
                max_iterations = 77, llm_api_key_for_byor = $2
          WHERE user_id = $1",
    )
    .bind(custom)
    .bind(&byor)
    .execute(&w.db.pool)
    .await
    .unwrap();
    // Version 3's default model, on the proxy's URL: not custom.
    sqlx::query(
        "UPDATE orgkeeper.user_settings
            SET llm_model = 'litellm_proxy/claude-sonnet-4-20250514', llm_base_url = $2, max_iterations = 50
          WHERE user_id = $1",
    )
    .bind(default)
    .bind(format!("{}/", w.litellm.base_url()))
    .execute(&w.db.pool)
    .await
    .unwrap();
    for user in [custom, default] {
        assert_eq!(w.migrate(user).await["status"], "migrated");
    }
    let d = w.daemon("w1");
    wait_until(LONG, "the migrations to finish", || w.actions_finished()).await;
    d.stop().await;
    for user in [custom, default] {
        for (check, ok, detail) in w.checks(user).await {
            assert!(ok, "{check}: {detail}");
        }
    }

    type Settings = (Option<String>, Option<String>, Option<i32>, Option<String>);
    let pool = &w.db.pool;
    let member = |user: Uuid| async move {
        sqlx::query_as::<_, Settings>(
            "SELECT llm_model, llm_base_url, max_iterations, llm_api_key_for_byor
               FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $1",
        )
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let org = |user: Uuid| async move {
        sqlx::query_as::<_, (Option<String>, Option<i32>, i32)>(
            "SELECT llm_model, max_iterations, org_version FROM orgkeeper.org WHERE id = $1",
        )
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let (model, base_url, iterations, member_byor) = member(custom).await;
    assert_eq!(model.as_deref(), Some("anthropic/claude-3-opus"));
    assert_eq!(base_url.as_deref(), Some("https://api.anthropic.com/"));
    assert_eq!(iterations, Some(77));
    let member_byor = member_byor.expect("the BYOR key moved to the membership");
    assert_eq!(
        w.keyring()
            .decrypt(
                &Place::new(
                    "org_member",
                    "llm_api_key_for_byor",
                    format!("{custom}/{custom}")
                ),
                &member_byor
            )
            .unwrap()
            .expose_secret(),
        "sk-ant-own-byor-key",
        "re-encrypted at its new place"
    );
    let (org_model, org_iterations, org_version) = org(custom).await;
    assert_eq!(
        (org_model.as_deref(), org_iterations, org_version),
        (Some("litellm_proxy/claude-opus-4-5-20251101"), None, 5),
        "the organization gets the current defaults"
    );

    assert_eq!(
        member(default).await,
        (None, None, None, None),
        "inherits the organization's"
    );
    let (org_model, org_iterations, org_version) = org(default).await;
    assert_eq!(
        (org_model.as_deref(), org_iterations, org_version),
        (Some("litellm_proxy/claude-sonnet-4-20250514"), Some(50), 3)
    );
}

#[tokio::test]
async fn a_first_login_of_a_user_litellm_does_not_know_fails_like_any_migration() {
    let w = World::new().await;
    let (user, _) = w.legacy_user(Some(10.0), 4.0, 5, None).await;
    w.litellm.delete_user(&user.to_string());
    let mut app = crate::support::app(&w.db, Some(user)).await;
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(user)
        .execute(&mut app)
        .await
        .unwrap();
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM orgkeeper.pending_external_actions WHERE org_id = $1 ORDER BY id",
    )
    .bind(user)
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert!(
        !kinds.iter().any(|k| k == "litellm.provision_org"),
        "the migration provisions the org itself: {kinds:?}"
    );
    let d = w.daemon("w1");
    wait_until(LONG, "the actions to finish", || w.actions_finished()).await;
    d.stop().await;
    let status: String =
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed", "no unlimited team for an unknown user");
    assert!(w.litellm.team(&user.to_string()).is_none());
}

#[tokio::test]
async fn records_detached_from_a_deleted_org_are_not_taken_for_the_creators_legacy_rows() {
    let w = World::new().await;
    let creator = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, 'x@example.com', true)")
        .bind(creator)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let mut orgs = Vec::new();
    for name in ["Paid", "Kept"] {
        let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org($1, $2)")
            .bind(name)
            .bind(creator)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        orgs.push(org);
    }
    sqlx::query(
        "INSERT INTO orgkeeper.stripe_customers (user_id, org_id, stripe_customer_id) VALUES ($1, $2, 'cus_team_paid');
         ",
    )
    .bind(creator)
    .bind(orgs[0])
    .execute(&w.db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO orgkeeper.billing_sessions (user_id, org_id, status) VALUES ($1, $2, 'completed')")
        .bind(creator)
        .bind(orgs[0])
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(creator)
        .bind(orgs[0])
        .execute(&w.db.pool)
        .await
        .unwrap();
    // The creator turns out to be a legacy user too.
    sqlx::query(
        "INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, 'x@example.com')",
    )
    .bind(creator)
    .execute(&w.db.pool)
    .await
    .unwrap();
    let report = w.migrate(creator).await;
    assert_eq!(report["status"], "migrated", "{report}");
    assert_eq!(report["moved"]["stripe_customers"], 0, "{report}");
    assert_eq!(report["moved"]["billing_sessions"], 0, "{report}");
    let (customer_org, byor): (Option<Uuid>, bool) = sqlx::query_as(
        "SELECT s.org_id, o.byor_export_enabled FROM orgkeeper.stripe_customers s, orgkeeper.org o
          WHERE s.stripe_customer_id = 'cus_team_paid' AND o.id = $1",
    )
    .bind(creator)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        customer_org, None,
        "the deleted org's customer stays detached"
    );
    assert!(!byor, "another org's payment does not enable BYOR export");
}

/// Every value of `user_migration.legacy_ciphertext`, the copies rollback
/// restores.
async fn rollback_copies(w: &World, user: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT e ->> 'value' FROM orgkeeper.user_migration m,
                jsonb_array_elements(m.legacy_ciphertext) e WHERE m.user_id = $1",
    )
    .bind(user)
    .fetch_all(&w.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_plaintext_legacy_secret_is_not_kept_in_plaintext_for_rollback_and_rollback_restores_what_openhands_reads(
) {
    let w = World::new().await;
    let (user, _) = w.legacy_user(None, 0.0, 5, None).await;
    // An older custom secret, stored in plaintext by OpenHands.
    sqlx::query("INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value) VALUES ($1, 'OLD', 'ghp-plaintext-old-token')")
        .bind(user)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.migrate(user).await;
    assert!(
        rollback_copies(&w, user)
            .await
            .contains(&"ghp-plaintext-old-token".to_string()),
        "before the daemon re-encrypts, the copy is the legacy value itself"
    );
    let d = w.daemon("w1");
    wait_until(LONG, "migration to finish", || w.actions_finished()).await;

    let copies = rollback_copies(&w, user).await;
    assert_eq!(copies.len(), 2, "both custom secrets are kept for rollback");
    let legacy = LegacyKey::from_jwt_secret(&w.jwt_secret);
    for copy in &copies {
        assert!(
            !copy.contains("ghp-plaintext") && !copy.contains("github-token"),
            "no plaintext copy at rest: {copy}"
        );
        assert!(
            !legacy.decrypt(copy).unwrap().was_plaintext(),
            "each copy is sealed as OpenHands seals secrets"
        );
    }

    let report = w.rollback(user).await;
    assert_eq!(report["status"], "rolled_back", "{report}");
    wait_until(LONG, "the reversals to finish", || w.actions_finished()).await;
    d.stop().await;
    let restored: Vec<(String, String)> = sqlx::query_as(
        "SELECT secret_name, secret_value FROM orgkeeper.custom_secrets WHERE user_id = $1 AND org_id IS NULL ORDER BY secret_name",
    )
    .bind(user)
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    let read: Vec<(String, String)> = restored
        .iter()
        .map(|(name, value)| {
            let value = legacy.decrypt(value).unwrap();
            assert!(!value.was_plaintext(), "{name} is restored sealed");
            (name.clone(), value.secret().expose_secret().to_string())
        })
        .collect();
    assert_eq!(
        read,
        vec![
            ("GITHUB".to_string(), "github-token-123".to_string()),
            ("OLD".to_string(), "ghp-plaintext-old-token".to_string()),
        ],
        "OpenHands reads back exactly what it had"
    );
}

//! Stories of billing customers (issue 12, item 2): with deployment setting
//! `billing` on (`ORGKEEPER_BILLING=on orgkeeper migrate`), every new team
//! organization gets exactly one Stripe customer — named after it, with the
//! owner's verified email and `metadata[org_id]` — recorded in
//! `stripe_customers`, whatever crashes, lost answers and duplicate
//! deliveries happen; personal organizations get none, and with billing off
//! nothing is enqueued.

use crate::support::{
    assert_refusal, daemon_config, daemon_settings, wait_until, TestDaemon, TestDb,
};
use orgkeeper::config::DeploymentSetting;
use orgkeeper::litellm::LiteLlmSimulator;
use orgkeeper::stripe::{Customer, Faults, StripeSimulator};
use secrecy::SecretString;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
const KIND: &str = "stripe.create_customer";

struct World {
    db: TestDb,
    litellm: LiteLlmSimulator,
    stripe: StripeSimulator,
    key: SecretString,
}

impl World {
    async fn new() -> World {
        World {
            db: TestDb::migrated().await,
            litellm: LiteLlmSimulator::start_local().await.unwrap(),
            stripe: StripeSimulator::start_local().await.unwrap(),
            key: orgkeeper::secrets::generate_key(),
        }
    }

    /// A world with billing on, as `ORGKEEPER_BILLING=on orgkeeper migrate` leaves it.
    async fn billing_on() -> World {
        let w = World::new().await;
        w.set_billing("on").await;
        w
    }

    async fn set_billing(&self, value: &str) {
        orgkeeper::db::apply_deployment_settings(
            &self.db.url,
            &[DeploymentSetting {
                name: "billing",
                value: value.into(),
                env: "ORGKEEPER_BILLING",
            }],
        )
        .await
        .unwrap();
    }

    fn daemon_with(&self, worker: &str, stripe: bool) -> TestDaemon {
        let mut config = daemon_config(
            &self.db.url,
            &self.litellm,
            &self.key,
            daemon_settings(worker, Duration::from_secs(1)),
        );
        if stripe {
            config.stripe = Some(orgkeeper::stripe::StripeConfig {
                base_url: self.stripe.base_url(),
                api_key: SecretString::from(self.stripe.api_key()),
                timeout: Duration::from_secs(10),
            });
        }
        TestDaemon::start(config)
    }

    fn daemon(&self, worker: &str) -> TestDaemon {
        self.daemon_with(worker, true)
    }

    /// A team organization inserted as an application would, by a new user
    /// with this email (verified or not). Returns (org, owner).
    async fn team_org(
        &self,
        name: &str,
        email: Option<&str>,
        verified: Option<bool>,
    ) -> (Uuid, Uuid) {
        let owner = Uuid::new_v4();
        sqlx::query("INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, $2, $3)")
            .bind(owner)
            .bind(email)
            .bind(verified)
            .execute(&self.db.pool)
            .await
            .unwrap();
        let org = sqlx::query_scalar(
            "INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2) RETURNING id",
        )
        .bind(name)
        .bind(owner)
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        (org, owner)
    }

    async fn personal_org(&self) -> Uuid {
        let user = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, $2, true)",
        )
        .bind(user)
        .bind(format!("{}@personal.example", user.simple()))
        .execute(&self.db.pool)
        .await
        .unwrap();
        sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
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

    async fn run_until_finished(&self, daemons: Vec<TestDaemon>) {
        wait_until(LONG, "every action to finish", || self.actions_finished()).await;
        for d in daemons {
            d.stop().await;
        }
    }

    /// The create_customer actions of an org: (id, status, result).
    async fn actions(&self, org: Uuid) -> Vec<(i64, String, Option<Value>)> {
        sqlx::query_as(
            "SELECT id, status, result FROM orgkeeper.pending_external_actions
              WHERE kind = $1 AND org_id = $2 ORDER BY id",
        )
        .bind(KIND)
        .bind(org)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    /// The stripe_customers rows of an org: (user_id, stripe_customer_id).
    async fn recorded(&self, org: Uuid) -> Vec<(Option<Uuid>, String)> {
        sqlx::query_as(
            "SELECT user_id, stripe_customer_id FROM orgkeeper.stripe_customers
              WHERE org_id = $1 ORDER BY id",
        )
        .bind(org)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    /// The simulator's customers tagged with this org.
    fn customers_of(&self, org: Uuid) -> Vec<Customer> {
        let org = org.to_string();
        self.stripe
            .customers()
            .into_iter()
            .filter(|c| c.metadata.get("org_id") == Some(&org))
            .collect()
    }

    /// Asserts the org has exactly one customer at Stripe, recorded once,
    /// for its owner; returns it.
    async fn one_customer(&self, org: Uuid, owner: Uuid) -> Customer {
        let customers = self.customers_of(org);
        assert_eq!(customers.len(), 1, "one customer for {org}: {customers:?}");
        let recorded = self.recorded(org).await;
        assert_eq!(
            recorded,
            vec![(Some(owner), customers[0].id.clone())],
            "one stripe_customers row for {org}"
        );
        customers.into_iter().next().unwrap()
    }
}

#[tokio::test]
async fn with_billing_on_each_team_org_gets_exactly_one_customer_and_personal_orgs_none() {
    let w = World::billing_on().await;
    let orgs = vec![
        (
            w.team_org("Acme", Some("ceo@acme.example"), Some(true))
                .await,
            Some("ceo@acme.example"),
        ),
        (
            w.team_org("Globex", Some("hank@globex.example"), Some(false))
                .await,
            None,
        ),
        (
            w.team_org("Initech", Some("bill@initech.example"), None)
                .await,
            None,
        ),
        (w.team_org("Umbrella", None, None).await, None),
        (
            w.team_org("Hooli", Some("gavin@hooli.example"), Some(true))
                .await,
            Some("gavin@hooli.example"),
        ),
    ];
    let personal = [w.personal_org().await, w.personal_org().await];
    // The action exists from the inserting transaction on, with fixed parameters.
    let ((acme, _), _) = orgs[0];
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM orgkeeper.pending_external_actions WHERE kind = $1 AND org_id = $2",
    )
    .bind(KIND)
    .bind(acme)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(payload["name"], "Acme");
    assert_eq!(payload["email"], "ceo@acme.example");

    let d = w.daemon("w1");
    w.run_until_finished(vec![d]).await;

    for ((org, owner), email) in &orgs {
        let customer = w.one_customer(*org, *owner).await;
        let name: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        assert_eq!(customer.name.as_deref(), Some(name.as_str()));
        assert_eq!(
            customer.email.as_deref(),
            *email,
            "only a verified email goes to Stripe ({name})"
        );
        assert_eq!(customer.metadata.len(), 1, "{customer:?}");
        let actions = w.actions(*org).await;
        assert_eq!(actions.len(), 1);
        let (_, status, result) = &actions[0];
        assert_eq!(status, "done");
        let result = result.as_ref().unwrap();
        assert_eq!(result["source"], "created", "{result}");
        assert_eq!(result["customer_id"], customer.id.as_str());
        assert_eq!(result["recorded"], "org");
    }
    for org in personal {
        assert!(
            w.actions(org).await.is_empty(),
            "no billing action for a personal org"
        );
        assert!(w.recorded(org).await.is_empty());
    }
    assert_eq!(w.stripe.stats().customers, orgs.len());
    let stats = w.stripe.stats();
    assert_eq!(stats.responses("create_customer", 200), orgs.len() as u64);
    assert_eq!(stats.responses("search_customers", 200), orgs.len() as u64);
}

#[tokio::test]
async fn with_billing_off_or_never_set_nothing_is_enqueued() {
    let w = World::new().await;
    let (never_set, _) = w
        .team_org("Never Set", Some("a@x.example"), Some(true))
        .await;
    w.set_billing("off").await;
    let (off, _) = w
        .team_org("Switched Off", Some("b@x.example"), Some(true))
        .await;
    assert!(w.actions(never_set).await.is_empty());
    assert!(w.actions(off).await.is_empty());

    // The database refuses a value that is neither on nor off, whoever writes it.
    let err =
        sqlx::query("UPDATE orgkeeper.deployment_setting SET value = 'yes' WHERE name = 'billing'")
            .execute(&w.db.pool)
            .await
            .unwrap_err();
    assert_refusal(&err, "23514", &[]);

    // Turning it on affects organizations created from then on.
    w.set_billing("on").await;
    let (on, owner) = w.team_org("Switched On", None, None).await;
    assert_eq!(w.actions(on).await.len(), 1);
    let d = w.daemon("w1");
    w.run_until_finished(vec![d]).await;
    w.one_customer(on, owner).await;
    assert_eq!(w.stripe.stats().customers, 1, "none for the earlier orgs");
}

#[tokio::test]
async fn a_lost_create_answer_and_a_flaky_stripe_still_make_one_customer_each() {
    let w = World::billing_on().await;
    // Every create is performed at Stripe and then answered 502 (the answer
    // is lost); a fifth of all requests fail before acting.
    w.stripe.set_faults(Faults {
        perform_then_502: true,
        error_rate: 0.2,
        ..Faults::default()
    });
    let mut orgs = Vec::new();
    for i in 0..6 {
        orgs.push(w.team_org(&format!("Flaky {i}"), None, None).await);
    }
    // Two replicas at once.
    let daemons = vec![w.daemon("w1"), w.daemon("w2")];
    w.run_until_finished(daemons).await;

    let mut found_by_search = 0;
    for (org, owner) in &orgs {
        w.one_customer(*org, *owner).await;
        let actions = w.actions(*org).await;
        assert_eq!(actions[0].1, "done");
        if actions[0].2.as_ref().unwrap()["source"] == "found_by_search" {
            found_by_search += 1;
        }
    }
    let stats = w.stripe.stats();
    assert_eq!(stats.customers, orgs.len());
    assert!(
        stats.responses("create_customer", 502) >= orgs.len() as u64,
        "every first create lost its answer: {stats:?}"
    );
    // Each lost answer was recovered by replaying the create under the
    // action's key or, when the action came back later, by the search.
    assert!(
        stats.idempotent_replays + found_by_search >= orgs.len() as u64,
        "{stats:?}, {found_by_search} found by search"
    );
}

/// Stripe answering slowly enough that [`block_the_write_back`] can lock
/// the org row between provisioning's write-back and the customer's.
fn slow_stripe() -> Faults {
    Faults {
        latency_ms: (700, 700),
        ..Faults::default()
    }
}

/// With a daemon running against a slow Stripe: waits for the org's
/// provisioning to finish, locks the org row (the customer's write-back,
/// record_billing_customer, locks it first), and returns once Stripe has
/// created the customer and the write-back is waiting for the lock.
async fn block_the_write_back(w: &World, org: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    wait_until(LONG, "provisioning to finish", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT status FROM orgkeeper.pending_external_actions
              WHERE kind = 'litellm.provision_org' AND org_id = $1",
        )
        .bind(org)
        .fetch_one(&w.db.pool)
        .await
        .unwrap()
            == "done"
    })
    .await;
    let mut blocker = w.db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR UPDATE")
        .bind(org)
        .execute(&mut *blocker)
        .await
        .unwrap();
    wait_until(LONG, "Stripe to answer the create", || async {
        w.stripe.stats().responses("create_customer", 200) == 1
    })
    .await;
    crate::support::wait_for_lock_wait(
        &w.db.pool,
        LONG,
        "the write-back to wait for the org row",
        "record_billing_customer",
    )
    .await;
    blocker
}

/// Kills the daemon after Stripe created the customer and before the
/// write-back committed; another daemon then finishes the action.
/// `search_lag`: Stripe's search does not see the new customer yet;
/// `forget_keys`: Stripe forgot the idempotency key (24 hours passed).
async fn killed_between_stripe_and_the_write_back(search_lag: bool, forget_keys: bool) -> Value {
    let w = World::billing_on().await;
    let (org, owner) = w
        .team_org("Crashy", Some("o@crashy.example"), Some(true))
        .await;
    w.stripe.set_faults(slow_stripe());
    let doomed = w.daemon("doomed");
    let blocker = block_the_write_back(&w, org).await;
    doomed.kill().await;
    assert_eq!(w.customers_of(org).len(), 1, "Stripe made the customer");

    w.stripe.set_faults(Faults::default());
    if search_lag {
        w.stripe.set_search_lag(Duration::from_secs(3600));
    }
    if forget_keys {
        w.stripe.expire_idempotency_keys();
    }
    let rescuer = w.daemon("rescuer");
    wait_until(LONG, "the rescuer to take the action over", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT locked_by FROM orgkeeper.pending_external_actions WHERE kind = $1 AND org_id = $2",
        )
        .bind(KIND)
        .bind(org)
        .fetch_one(&w.db.pool)
        .await
        .unwrap()
        .is_some_and(|l| l.starts_with("rescuer"))
    })
    .await;
    // The doomed write-back, still waiting in the database, now fails its
    // lease fence; the rescuer's goes through.
    blocker.rollback().await.unwrap();
    w.run_until_finished(vec![rescuer]).await;

    let customer = w.one_customer(org, owner).await;
    assert_eq!(customer.email.as_deref(), Some("o@crashy.example"));
    assert_eq!(w.stripe.stats().customers, 1);
    let actions = w.actions(org).await;
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].1, "done");
    let result = actions[0].2.clone().unwrap();
    assert_eq!(result["customer_id"], customer.id.as_str());
    result
}

#[tokio::test]
async fn killed_after_stripe_answered_the_search_finds_the_customer() {
    let result = killed_between_stripe_and_the_write_back(false, true).await;
    assert_eq!(result["source"], "found_by_search", "{result}");
}

#[tokio::test]
async fn killed_after_stripe_answered_while_search_lags_the_idempotency_key_replays_it() {
    let w_result = killed_between_stripe_and_the_write_back(true, false).await;
    // Search missed it; the create with the action's key was replayed.
    assert_eq!(w_result["source"], "created", "{w_result}");
}

#[tokio::test]
async fn a_duplicate_delivery_reuses_the_customer_recorded_or_found_at_stripe() {
    let w = World::billing_on().await;
    let (org, owner) = w.team_org("Twice", None, None).await;
    let d = w.daemon("w1");
    w.run_until_finished(vec![d]).await;
    let customer = w.one_customer(org, owner).await;

    // The same request delivered again (another action, so another
    // idempotency key): the recorded customer is reused.
    let enqueue_again = || async {
        sqlx::query(
            "SELECT orgkeeper.enqueue_action($1, $2, $3, payload)
               FROM orgkeeper.pending_external_actions WHERE kind = $1 AND org_id = $2 ORDER BY id LIMIT 1",
        )
        .bind(KIND)
        .bind(org)
        .bind(owner)
        .execute(&w.db.pool)
        .await
        .unwrap();
    };
    enqueue_again().await;
    let d = w.daemon("w2");
    w.run_until_finished(vec![d]).await;
    assert_eq!(w.one_customer(org, owner).await, customer);
    let actions = w.actions(org).await;
    assert_eq!(actions[1].2.as_ref().unwrap()["source"], "already_recorded");

    // Even with the record lost (a DBA deleted it), Stripe's search finds it.
    sqlx::query("DELETE FROM orgkeeper.stripe_customers WHERE org_id = $1")
        .bind(org)
        .execute(&w.db.pool)
        .await
        .unwrap();
    enqueue_again().await;
    let d = w.daemon("w3");
    w.run_until_finished(vec![d]).await;
    assert_eq!(w.one_customer(org, owner).await, customer);
    let actions = w.actions(org).await;
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[2].2.as_ref().unwrap()["source"], "found_by_search");
    assert_eq!(w.stripe.stats().responses("create_customer", 200), 1);
}

#[tokio::test]
async fn an_org_deleted_before_its_customer_was_made_gets_none() {
    let w = World::billing_on().await;
    let (org, owner) = w.team_org("Short Lived", None, None).await;
    // A user may not delete their last organization: give them their personal one.
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(owner)
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(owner)
        .bind(org)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let d = w.daemon("w1");
    w.run_until_finished(vec![d]).await;
    let actions = w.actions(org).await;
    assert_eq!(actions.len(), 1);
    let (_, status, result) = &actions[0];
    assert_eq!(status, "done");
    let result = result.as_ref().unwrap();
    assert_eq!(result["created"], false, "{result}");
    assert!(
        result["reason"].as_str().unwrap().contains("deleted"),
        "{result}"
    );
    assert_eq!(w.stripe.stats().customers, 0);
    assert_eq!(w.stripe.stats().requests_to("create_customer"), 0);
}

#[tokio::test]
async fn an_org_deleted_while_stripe_answered_keeps_its_customer_detached() {
    let w = World::billing_on().await;
    let (org, owner) = w.team_org("Deleted Meanwhile", None, None).await;
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(owner)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.stripe.set_faults(slow_stripe());
    let d = w.daemon("w1");
    let mut blocker = block_the_write_back(&w, org).await;
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(owner)
        .bind(org)
        .execute(&mut *blocker)
        .await
        .unwrap();
    blocker.commit().await.unwrap();
    w.run_until_finished(vec![d]).await;

    let customers = w.customers_of(org);
    assert_eq!(customers.len(), 1, "Stripe made it before the deletion");
    let detached: Vec<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "SELECT user_id, org_id FROM orgkeeper.stripe_customers WHERE stripe_customer_id = $1",
    )
    .bind(&customers[0].id)
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        detached,
        vec![(Some(owner), None)],
        "kept as a detached financial record"
    );
    let actions = w.actions(org).await;
    assert_eq!(actions[0].1, "done");
    assert_eq!(actions[0].2.as_ref().unwrap()["recorded"], "detached");
}

#[tokio::test]
async fn without_stripe_configured_the_action_fails_visibly_and_a_retry_finishes_it() {
    let w = World::billing_on().await;
    let (org, owner) = w.team_org("No Stripe", None, None).await;
    let d = w.daemon_with("w1", false);
    w.run_until_finished(vec![d]).await;
    let actions = w.actions(org).await;
    assert_eq!(actions[0].1, "failed");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["actions", "list", "--status", "failed"])
        .env("DATABASE_URL", &w.db.url)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout);
    let line = listed
        .lines()
        .find(|l| l.contains(KIND))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("STRIPE_API_KEY"), "{line}");

    sqlx::query("SELECT orgkeeper.retry_action($1)")
        .bind(actions[0].0)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let d = w.daemon("w2");
    w.run_until_finished(vec![d]).await;
    w.one_customer(org, owner).await;
}

#[tokio::test]
async fn orgkeeper_migrate_records_orgkeeper_billing_and_refuses_nonsense() {
    let db = TestDb::migrated().await;
    let migrate = |billing: Option<&str>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"));
        cmd.arg("migrate").env("DATABASE_URL", &db.url);
        match billing {
            Some(v) => cmd.env("ORGKEEPER_BILLING", v),
            None => cmd.env_remove("ORGKEEPER_BILLING"),
        };
        cmd.output()
    };
    let setting = || async {
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT value, set_by FROM orgkeeper.deployment_setting WHERE name = 'billing'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    };

    let out = migrate(Some("on")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("deployment setting billing = on (recorded)"),
        "{stdout}"
    );
    assert_eq!(
        setting().await,
        Some((
            "on".into(),
            Some("orgkeeper migrate (ORGKEEPER_BILLING)".into())
        ))
    );
    let out = migrate(Some("on")).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("billing = on (unchanged)"));

    let out = migrate(Some("maybe")).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ORGKEEPER_BILLING"), "{stderr}");
    assert!(stderr.contains("maybe"), "{stderr}");
    assert_eq!(setting().await.unwrap().0, "on", "nothing changed");

    let out = migrate(None).await.unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("deployment setting"));
    assert_eq!(
        setting().await.unwrap().0,
        "on",
        "unset keeps the recorded value"
    );

    let out = migrate(Some("OFF")).await.unwrap();
    assert!(out.status.success());
    assert_eq!(setting().await.unwrap().0, "off");
}

//! Stories about LLM credentials never crossing a tenant: the database
//! chooses organization ids, orgkeeper adopts and deletes only teams it made
//! for the organization, every key is random and every active member has
//! their own, removed members lose theirs, and a ciphertext decrypts only at
//! the place it was written for.

use crate::support::{
    assert_refusal, daemon_config, daemon_settings, db_error, wait_until, TestDaemon, TestDb,
};
use orgkeeper::litellm::{LiteLlmClient, LiteLlmConfig, LiteLlmSimulator, NewTeam};
use orgkeeper::secrets::{Keyring, Place, SecretError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// A test database, the LiteLLM simulator, the secret key and a daemon.
struct World {
    db: TestDb,
    sim: LiteLlmSimulator,
    key: SecretString,
    daemon: Option<TestDaemon>,
}

impl World {
    async fn new() -> World {
        World {
            db: TestDb::migrated().await,
            sim: LiteLlmSimulator::start_local().await.unwrap(),
            key: orgkeeper::secrets::generate_key(),
            daemon: None,
        }
    }

    fn start_daemon(&mut self) {
        self.daemon = Some(TestDaemon::start(daemon_config(
            &self.db.url,
            &self.sim,
            &self.key,
            daemon_settings("w1", Duration::from_secs(5)),
        )));
    }

    async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop().await;
        }
    }

    fn keyring(&self) -> Keyring {
        Keyring::new(&self.key, &[], None).unwrap()
    }

    /// A LiteLLM client with the simulator's master key, for arranging
    /// what another environment left at the proxy.
    fn litellm(&self) -> LiteLlmClient {
        LiteLlmClient::new(LiteLlmConfig::new(
            self.sim.base_url(),
            self.sim.master_key_secret(),
        ))
        .unwrap()
    }

    async fn user(&self, email: &str) -> Uuid {
        crate::support::user(&self.db, email).await
    }

    async fn org(&self, name: &str, owner: Uuid) -> Uuid {
        sqlx::query_scalar("SELECT orgkeeper.create_org($1, $2)")
            .bind(name)
            .bind(owner)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// An organization `name` of a new owner with Bob as a member, the
    /// daemon running, provisioned and every action finished: (owner, Bob, org).
    async fn org_with_bob(&mut self, name: &str) -> (Uuid, Uuid, Uuid) {
        let owner = self.user("owner@example.com").await;
        let bob = self.user("bob@example.com").await;
        let org = self.org(name, owner).await;
        self.start_daemon();
        self.wait_status(org, "active").await;
        sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
            .bind(owner)
            .bind(org)
            .bind(bob)
            .execute(&self.db.pool)
            .await
            .unwrap();
        self.wait_idle().await;
        (owner, bob, org)
    }

    async fn status(&self, org: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
    }

    async fn wait_status(&self, org: Uuid, status: &str) {
        wait_until(LONG, &format!("org {org} {status}"), || async {
            self.status(org).await.as_deref() == Some(status)
        })
        .await;
    }

    async fn actions_finished(&self) -> bool {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE finished_at IS NULL",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
            == 0
    }

    async fn wait_idle(&self) {
        wait_until(LONG, "every action to finish", || self.actions_finished()).await;
    }

    /// The stored ciphertext of a member's own key, if any.
    async fn member_ciphertext(&self, org: Uuid, user: Uuid) -> Option<String> {
        sqlx::query_scalar(
            "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $2",
        )
        .bind(org)
        .bind(user)
        .fetch_optional(&self.db.pool)
        .await
        .unwrap()
        .flatten()
    }

    /// A member's own key, decrypted as an application would.
    async fn member_key(&self, org: Uuid, user: Uuid) -> String {
        let ct = self
            .member_ciphertext(org, user)
            .await
            .unwrap_or_else(|| panic!("member {user} of {org} has no key"));
        self.keyring()
            .decrypt(&Place::member_key(org, user), &ct)
            .unwrap()
            .expose_secret()
            .to_string()
    }

    async fn last_result(&self, kind: &str) -> Value {
        sqlx::query_scalar(
            "SELECT result FROM orgkeeper.pending_external_actions WHERE kind = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(kind)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }
}

/// A connection acting as the application for `user`.
async fn app(db: &TestDb, user: Uuid) -> PgConnection {
    let mut conn = db.connect().await;
    sqlx::query("SET ROLE orgkeeper_app")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('orgkeeper.user_id', $1, false)")
        .bind(user.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// A team another environment made with the id `team_id`, holding a key.
async fn foreign_team(w: &World, team_id: &str) {
    let c = w.litellm();
    c.create_team(&NewTeam {
        team_id,
        team_alias: "someone else's",
        max_budget: None,
        models: &[],
        metadata: json!({"environment": "staging"}),
    })
    .await
    .unwrap();
    let key = SecretString::from(format!("sk-foreign-{}", Uuid::new_v4().simple()));
    c.generate_key(&orgkeeper::litellm::NewKey {
        key: &key,
        key_alias: &format!("staging key {team_id}"),
        team_id,
        user_id: "staging-user",
        models: &[],
        metadata: json!({}),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_application_cannot_choose_an_organizations_id() {
    let w = World::new().await;
    let alice = w.user("alice@example.com").await;
    let victim = w.user("victim@example.com").await;
    let mut conn = app(&w.db, alice).await;

    for (sql, id) in [
        (
            "INSERT INTO orgkeeper.org (id, name, created_by) VALUES ($1, 'Chosen', $2)",
            Uuid::new_v4(),
        ),
        (
            "INSERT INTO orgkeeper.org (id, name, created_by) VALUES ($1, 'Squat', $2)",
            victim,
        ),
        (
            "INSERT INTO orgkeeper.org (id, name, kind, created_by) VALUES ($1, 'Mine', 'personal', $2)",
            alice,
        ),
    ] {
        let err = sqlx::query(sql)
            .bind(id)
            .bind(alice)
            .execute(&mut conn)
            .await
            .unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{message}");
        assert!(
            message.contains("an application cannot choose an organization's id; omit id"),
            "{message}"
        );
    }
    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org")
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(orgs, 0, "nothing was inserted");

    let team: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Acme', $1) RETURNING id",
    )
    .bind(alice)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_ne!(team, alice);
    assert_ne!(team, victim);
    let personal: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, kind, created_by) VALUES ('Alice alone', 'personal', $1) RETURNING id",
    )
    .bind(alice)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(personal, alice, "a personal org's id is its creator's");
    let via_function: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Acme 2', $1)")
        .bind(alice)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_ne!(via_function, team);

    // Trusted roles still choose ids where the design needs them.
    let chosen = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.org (id, name, created_by) VALUES ($1, 'By the DBA', $2)")
        .bind(chosen)
        .bind(victim)
        .execute(&w.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_foreign_team_with_the_orgs_id_is_neither_adopted_nor_deleted() {
    let mut w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let org = w.org("Collides", owner).await;
    foreign_team(&w, &org.to_string()).await;

    w.start_daemon();
    w.wait_status(org, "failed").await;
    w.wait_idle().await;
    w.stop_daemon().await;

    let error: Value =
        sqlx::query_scalar("SELECT provisioning_error FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains(&org.to_string()) && message.contains("not this organization's"),
        "the org's error names the foreign team: {error}"
    );
    assert_eq!(error["cleanup"]["team_deleted"], false, "{error}");
    assert!(error["cleanup"]["team_foreign"].is_string(), "{error}");
    assert_eq!(error["cleanup"]["team_created"], false, "{error}");

    let team = w
        .sim
        .team(&org.to_string())
        .expect("the foreign team is still there");
    assert_eq!(team.metadata, json!({"environment": "staging"}));
    assert_eq!(
        team.keys.len(),
        1,
        "only the foreign key: none was minted in it"
    );
    assert!(team.members.is_empty(), "nobody was added to it");
    assert_eq!(w.member_ciphertext(org, owner).await, None);
}

#[tokio::test]
async fn deleting_an_org_whose_team_is_not_ours_leaves_the_team() {
    let mut w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let org = w.org("Soon replaced", owner).await;
    w.start_daemon();
    w.wait_status(org, "active").await;
    w.wait_idle().await;

    // Behind orgkeeper's back, the team is replaced by someone else's.
    w.litellm().delete_team(&org.to_string()).await.unwrap();
    foreign_team(&w, &org.to_string()).await;

    sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.wait_idle().await;
    w.stop_daemon().await;

    let result = w.last_result("litellm.delete_team").await;
    assert_eq!(result["team_deleted"], false, "{result}");
    assert!(result["team_foreign"].is_string(), "{result}");
    let team = w
        .sim
        .team(&org.to_string())
        .expect("the foreign team survives");
    assert_eq!(team.keys.len(), 1);
}

#[tokio::test]
async fn a_personal_org_recreated_with_the_same_id_gets_a_different_key() {
    let mut w = World::new().await;
    let user = w.user("again@example.com").await;
    w.start_daemon();
    let mut keys = Vec::new();
    for _ in 0..2 {
        let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
            .bind(user)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
        assert_eq!(org, user);
        w.wait_status(org, "active").await;
        keys.push(w.member_key(org, user).await);
        sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .execute(&w.db.pool)
            .await
            .unwrap();
        w.wait_idle().await;
    }
    w.stop_daemon().await;
    assert_ne!(
        keys[0], keys[1],
        "keys are random, never derived from the org id"
    );
    assert!(!w.sim.has_key(&keys[0]) && !w.sim.has_key(&keys[1]));
}

#[tokio::test]
async fn every_member_has_their_own_key_only_while_active() {
    let mut w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let (bob, carol) = (
        w.user("bob@example.com").await,
        w.user("carol@example.com").await,
    );
    let org = w.org("Shared nothing", owner).await;
    w.start_daemon();
    w.wait_status(org, "active").await;
    for (user, role) in [(bob, "member"), (carol, "admin")] {
        sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, $4)")
            .bind(owner)
            .bind(org)
            .bind(user)
            .bind(role)
            .execute(&w.db.pool)
            .await
            .unwrap();
    }
    w.wait_idle().await;

    let owner_key = w.member_key(org, owner).await;
    let bob_key = w.member_key(org, bob).await;
    let carol_key = w.member_key(org, carol).await;
    assert!(owner_key != bob_key && bob_key != carol_key && owner_key != carol_key);
    for (user, key) in [(owner, &owner_key), (bob, &bob_key), (carol, &carol_key)] {
        let at_proxy = w.sim.key(key).expect("LiteLLM knows the member's key");
        assert_eq!(at_proxy.user_id.as_deref(), Some(user.to_string().as_str()));
        assert_eq!(at_proxy.team_id.as_deref(), Some(org.to_string().as_str()));
        assert!(
            works(&w.sim, key).await,
            "the member's key is accepted by the proxy"
        );
    }
    let org_key: Option<String> =
        sqlx::query_scalar("SELECT llm_api_key FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&w.db.pool)
            .await
            .unwrap();
    assert_eq!(org_key, None, "no key is shared by the organization");
    let team = w.sim.team(&org.to_string()).unwrap();
    assert_eq!(team.members.len(), 3);

    // Bob is removed, Carol is disabled: both keys stop working at once.
    sqlx::query("SELECT orgkeeper.remove_member($1, $2, $3)")
        .bind(owner)
        .bind(org)
        .bind(bob)
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE orgkeeper.org_member SET status = 'disabled' WHERE org_id = $1 AND user_id = $2",
    )
    .bind(org)
    .bind(carol)
    .execute(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        w.member_ciphertext(org, carol).await,
        None,
        "a disabled membership forgets its key"
    );
    w.wait_idle().await;
    assert!(!w.sim.has_key(&bob_key) && !works(&w.sim, &bob_key).await);
    assert!(!w.sim.has_key(&carol_key) && !works(&w.sim, &carol_key).await);
    assert!(
        works(&w.sim, &owner_key).await,
        "the owner's key is untouched"
    );
    let members: Vec<String> = w
        .sim
        .team(&org.to_string())
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members, vec![owner.to_string()]);

    // Re-activated, Carol gets a new key, never the old one.
    sqlx::query(
        "UPDATE orgkeeper.org_member SET status = 'active' WHERE org_id = $1 AND user_id = $2",
    )
    .bind(org)
    .bind(carol)
    .execute(&w.db.pool)
    .await
    .unwrap();
    w.wait_idle().await;
    w.stop_daemon().await;
    let carol_again = w.member_key(org, carol).await;
    assert_ne!(carol_again, carol_key);
    assert!(works(&w.sim, &carol_again).await);
}

/// The daemon commits a member's new key asynchronously: a database crash
/// may lose that commit (never the key's value, saved synchronously in the
/// action's progress before `/key/generate`). Here the loss is staged by
/// hand, exactly as the crash would leave it: the membership without its
/// key, the action running under a lease that expired.
#[tokio::test]
async fn a_members_key_whose_write_back_was_lost_is_stored_again_and_never_made_twice() {
    let mut w = World::new().await;
    let (_, bob, org) = w.org_with_bob("Lost commit").await;
    w.stop_daemon().await;
    let key = w.member_key(org, bob).await;
    assert_eq!(w.sim.user_keys(&bob.to_string()).len(), 1);

    let lost = sqlx::query(
        "WITH m AS (UPDATE orgkeeper.org_member SET llm_api_key = NULL
                     WHERE org_id = $1 AND user_id = $2 RETURNING 1)
         UPDATE orgkeeper.pending_external_actions
            SET status = 'running', finished_at = NULL, result = NULL,
                locked_by = 'w1/' || attempts, locked_until = now() - interval '1 second'
          WHERE kind = 'litellm.add_member' AND org_id = $1 AND payload ->> 'user_id' = $2::text
            AND progress ? 'key' AND EXISTS (SELECT 1 FROM m)",
    )
    .bind(org)
    .bind(bob)
    .execute(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        lost.rows_affected(),
        1,
        "the action had saved the key's value"
    );
    assert_eq!(w.member_ciphertext(org, bob).await, None);

    w.start_daemon();
    w.wait_idle().await;
    w.stop_daemon().await;
    assert_eq!(
        w.member_key(org, bob).await,
        key,
        "the same key, stored again"
    );
    let at_proxy = w.sim.user_keys(&bob.to_string());
    assert_eq!(at_proxy.len(), 1, "no second key: {at_proxy:?}");
    assert!(works(&w.sim, &key).await);
}

/// Whether the proxy accepts `key` for a model list (`GET /v1/models`):
/// what an application calling the LLM with it would see.
async fn works(sim: &LiteLlmSimulator, key: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{}/v1/models", sim.base_url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
}

#[tokio::test]
async fn a_ciphertext_copied_into_another_members_row_does_not_decrypt() {
    let mut w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let mallory = w.user("mallory@example.com").await;
    let org = w.org("Copycat", owner).await;
    w.start_daemon();
    w.wait_status(org, "active").await;
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(org)
        .bind(mallory)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.wait_idle().await;
    w.stop_daemon().await;

    let owners = w.member_ciphertext(org, owner).await.unwrap();
    sqlx::query(
        "UPDATE orgkeeper.org_member SET llm_api_key = $3 WHERE org_id = $1 AND user_id = $2",
    )
    .bind(org)
    .bind(mallory)
    .bind(&owners)
    .execute(&w.db.pool)
    .await
    .unwrap();
    let err = w
        .keyring()
        .decrypt(&Place::member_key(org, mallory), &owners)
        .unwrap_err();
    assert!(matches!(err, SecretError::WrongPlace(_)));
    assert!(
        err.to_string()
            .contains(&format!("org_member.llm_api_key of row {org}/{mallory}")),
        "the error names the row: {err}"
    );
    assert!(w
        .keyring()
        .decrypt(&Place::member_key(org, owner), &owners)
        .is_ok());
}

#[tokio::test]
async fn a_member_added_to_an_org_whose_team_is_foreign_never_joins_that_team() {
    let mut w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let dave = w.user("dave@example.com").await;
    let org = w.org("Not adopted", owner).await;
    foreign_team(&w, &org.to_string()).await;
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(org)
        .bind(dave)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.start_daemon();
    w.wait_status(org, "failed").await;
    w.wait_idle().await;
    w.stop_daemon().await;
    let team = w.sim.team(&org.to_string()).unwrap();
    assert!(
        team.members.is_empty() && team.keys.len() == 1,
        "nobody joined the foreign team: {team:?}"
    );
    assert_eq!(w.member_ciphertext(org, dave).await, None);
    let (status, error): (String, Option<String>) = sqlx::query_as(
        "SELECT status, last_error FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.add_member'",
    )
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(status, "failed", "visible to operators");
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("not provisioned"),
        "{error:?}"
    );
}

#[tokio::test]
async fn rotating_keys_stores_the_new_key_first_then_deletes_the_old_one() {
    let mut w = World::new().await;
    let (owner, bob, org) = w.org_with_bob("Rotating").await;
    let (owner_before, bob_before) = (w.member_key(org, owner).await, w.member_key(org, bob).await);

    // Bad input changes nothing.
    for (org_arg, user_arg, code) in [
        (Uuid::new_v4(), None, "P0002"),
        (org, Some(Uuid::new_v4()), "P0002"),
    ] {
        let err = sqlx::query("SELECT orgkeeper.rotate_member_keys($1, $2)")
            .bind(org_arg)
            .bind(user_arg)
            .execute(&w.db.pool)
            .await
            .unwrap_err();
        assert_eq!(db_error(&err).0, code, "{}", db_error(&err).1);
    }
    assert!(w.actions_finished().await, "nothing was enqueued");

    // Only Bob's key first.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT orgkeeper.rotate_member_keys($1, $2)")
        .bind(org)
        .bind(bob)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    w.wait_idle().await;
    let bob_after = w.member_key(org, bob).await;
    assert_ne!(bob_after, bob_before);
    assert!(works(&w.sim, &bob_after).await && !works(&w.sim, &bob_before).await);
    assert_eq!(w.member_key(org, owner).await, owner_before, "only Bob's");
    let at_proxy = w.sim.key(&bob_after).unwrap();
    assert_eq!(
        at_proxy.alias.as_deref(),
        Some(format!("OpenHands Cloud - user {bob} - org {org}").as_str()),
        "the new key carries the member's alias, so removing the member finds it"
    );

    // Then everyone's.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT orgkeeper.rotate_member_keys($1)")
        .bind(org)
        .fetch_one(&w.db.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    w.wait_idle().await;
    let owner_after = w.member_key(org, owner).await;
    assert_ne!(owner_after, owner_before);
    assert!(works(&w.sim, &owner_after).await && !works(&w.sim, &owner_before).await);
    assert_eq!(
        w.sim.team(&org.to_string()).unwrap().keys.len(),
        2,
        "no key left behind"
    );
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.rotate_key'",
    )
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec!["done"; 3]);

    // A removed member's rotated key goes with them.
    sqlx::query("SELECT orgkeeper.remove_member($1, $2, $3)")
        .bind(owner)
        .bind(org)
        .bind(bob)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.wait_idle().await;
    w.stop_daemon().await;
    let latest_bob = w.sim.team(&org.to_string()).unwrap().keys.len();
    assert_eq!(
        latest_bob, 1,
        "Bob's rotated key was deleted with his membership"
    );
}

/// Runs the orgkeeper binary with `args` against `db`: (exit code, stdout, stderr).
async fn orgkeeper(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_operator_finds_a_revoked_key_and_replaces_it_from_the_command_line() {
    let mut w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let bob = w.user("bob@example.com").await;
    let org = w.org("Checked", owner).await;
    w.start_daemon();
    w.wait_status(org, "active").await;
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(org)
        .bind(bob)
        .execute(&w.db.pool)
        .await
        .unwrap();
    w.wait_idle().await;
    // Someone deletes Bob's key at the proxy, behind orgkeeper's back.
    let bobs = SecretString::from(w.member_key(org, bob).await);
    w.litellm().delete_key(&bobs).await.unwrap();

    let org_arg = org.to_string();
    let (code, out, err) = orgkeeper(&w.db, &["keys", "verify", "--org", &org_arg]).await;
    assert_eq!(code, 1, "{out}{err}");
    let line = |user: Uuid| {
        out.lines()
            .find(|l| l.contains(&user.to_string()))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(bob).contains("INVALID"), "{out}");
    assert!(
        line(owner).contains("valid") && !line(owner).contains("INVALID"),
        "{out}"
    );
    assert!(out.contains("2 keys checked, 1 invalid"), "{out}");

    let bob_arg = bob.to_string();
    let (code, out, err) = orgkeeper(
        &w.db,
        &["keys", "rotate", "--org", &org_arg, "--user", &bob_arg],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    w.wait_idle().await;
    let (code, out, _) = orgkeeper(&w.db, &["keys", "verify", "--all"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 keys checked, 0 invalid"), "{out}");
    w.stop_daemon().await;

    let unknown = Uuid::new_v4().to_string();
    let (code, _, err) = orgkeeper(&w.db, &["keys", "verify", "--org", &unknown]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("organization {unknown} does not exist")) && err.contains("P0002"),
        "{err}"
    );
}

#[tokio::test]
async fn an_admin_of_someone_elses_personal_org_cannot_read_its_keys() {
    let w = World::new().await;
    let owner = w.user("owner@example.com").await;
    let admin = w.user("admin@example.com").await;
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(owner)
        .execute(&w.db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.add_member($1, $1, $2, 'admin')")
        .bind(owner)
        .bind(admin)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let mut conn = app(&w.db, admin).await;
    let err = sqlx::query("SELECT * FROM orgkeeper.org_secrets($1, $2)")
        .bind(admin)
        .bind(owner)
        .fetch_all(&mut conn)
        .await
        .unwrap_err();
    assert_refusal(&err, "42501", &["are its user's own"]);
    let mut own = app(&w.db, owner).await;
    let rows = sqlx::query("SELECT * FROM orgkeeper.org_secrets($1, $1)")
        .bind(owner)
        .fetch_all(&mut own)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "the user reads their own");
}

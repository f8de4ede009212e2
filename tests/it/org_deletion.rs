//! Stories about deleting an organization in the open (issue 12, item 3):
//! `orgkeeper.delete_org`, called by the application, turns the organization
//! `deprovisioning` — gone for the application, its name still taken — the
//! daemon deletes the LiteLLM team, then the row, and a tombstone stays in
//! `orgkeeper.org_deleted`. A cleanup that fails for good leaves the
//! organization `deprovisioning` and the action visible to operators.

use crate::support::{
    app, daemon_config, daemon_settings, db_error, personal, refused, team, user, wait_until,
    TestDaemon, TestDb,
};
use orgkeeper::litellm::{Faults, LiteLlmSimulator};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_orgkeeper");

struct World {
    db: TestDb,
    sim: LiteLlmSimulator,
    key: SecretString,
}

impl World {
    async fn new() -> World {
        World {
            db: TestDb::migrated().await,
            sim: LiteLlmSimulator::start_local().await.unwrap(),
            key: orgkeeper::secrets::generate_key(),
        }
    }

    fn daemon(&self) -> TestDaemon {
        TestDaemon::start(daemon_config(
            &self.db.url,
            &self.sim,
            &self.key,
            daemon_settings("w1", Duration::from_secs(5)),
        ))
    }

    async fn idle(&self) -> bool {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE finished_at IS NULL",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
            == 0
    }

    async fn wait_idle(&self) {
        wait_until(LONG, "every action to finish", || self.idle()).await;
    }

    async fn status(&self, org: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
    }

    /// (kind, status) of the organization's actions, in order.
    async fn actions(&self, org: Uuid) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT kind, status FROM orgkeeper.pending_external_actions WHERE org_id = $1 ORDER BY id",
        )
        .bind(org)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }

    async fn tombstone(&self, org: Uuid) -> Option<sqlx::postgres::PgRow> {
        sqlx::query(
            "SELECT name, kind, created_by, deleted_by, deleted_via, requested_at <= deleted_at AS ordered, cleanup
               FROM orgkeeper.org_deleted WHERE id = $1",
        )
        .bind(org)
        .fetch_optional(&self.db.pool)
        .await
        .unwrap()
    }

    async fn members(&self, org: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1")
            .bind(org)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    /// `orgkeeper actions …` as an operator runs it; returns stdout.
    fn operator(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("actions")
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &self.db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "orgkeeper actions {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

async fn delete_org(conn: &mut PgConnection, actor: Uuid, org: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(actor)
        .bind(org)
        .execute(conn)
        .await
        .map(drop)
}

/// What the application, acting for `user`, can see of `org`: its row, its
/// memberships, and whether list_orgs names it.
async fn seen_by(db: &TestDb, user: Uuid, org: Uuid) -> (i64, i64, bool) {
    let mut conn = app(db, Some(user)).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1")
            .bind(org)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let listed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM orgkeeper.list_orgs($1) WHERE org_id = $2)",
    )
    .bind(user)
    .bind(org)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    (rows, members, listed)
}

#[tokio::test]
async fn deletion_passes_through_deprovisioning_and_leaves_a_tombstone() {
    let w = World::new().await;
    let owner = user(&w.db, "owner@doomed.test").await;
    let bob = user(&w.db, "bob@doomed.test").await;
    for u in [owner, bob] {
        personal(&w.db, u).await;
    }
    let org = team(&w.db, "Doomed Co", owner).await;
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(org)
        .bind(bob)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let carol = user(&w.db, "carol@doomed.test").await;
    let token: String = sqlx::query_scalar(
        "SELECT orgkeeper.create_invitation($1, $2, 'carol@doomed.test', 'member')",
    )
    .bind(owner)
    .bind(org)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    let d = w.daemon();
    w.wait_idle().await;
    assert_eq!(w.status(org).await.as_deref(), Some("active"));
    assert_eq!(w.sim.team(&org.to_string()).unwrap().keys.len(), 2);
    assert_eq!(seen_by(&w.db, bob, org).await, (1, 2, true));
    d.stop().await;

    // The owner deletes it, as the application does.
    let mut owner_app = app(&w.db, Some(owner)).await;
    delete_org(&mut owner_app, owner, org).await.unwrap();

    // A state, not a disappearance: the row is there, deprovisioning, with
    // who asked; memberships stay; one deprovisioning action, no per-member one.
    let row = sqlx::query(
        "SELECT provisioning_status, deletion_requested_by, deletion_requested_at IS NOT NULL AS at
           FROM orgkeeper.org WHERE id = $1",
    )
    .bind(org)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    assert_eq!(
        row.get::<String, _>("provisioning_status"),
        "deprovisioning"
    );
    assert_eq!(
        row.get::<Option<Uuid>, _>("deletion_requested_by"),
        Some(owner)
    );
    assert!(row.get::<bool, _>("at"));
    assert_eq!(
        w.members(org).await,
        2,
        "memberships stay until the row goes"
    );
    let actions = w.actions(org).await;
    assert_eq!(
        actions.last().unwrap(),
        &("litellm.deprovision_org".to_string(), "pending".to_string())
    );
    assert!(
        !actions.iter().any(|(k, _)| k == "litellm.remove_member"),
        "{actions:?}"
    );

    // The application sees nothing of it, for any member.
    for u in [owner, bob] {
        assert_eq!(seen_by(&w.db, u, org).await, (0, 0, false), "user {u}");
    }
    // No management function acts on it.
    let mut bob_app = app(&w.db, Some(bob)).await;
    refused(
        delete_org(&mut owner_app, owner, org).await,
        "55000",
        &[&format!("organization {org} is being deleted")],
    );
    refused(
        sqlx::query("SELECT orgkeeper.rename_org($1, $2, 'Revived')")
            .bind(owner)
            .bind(org)
            .execute(&mut owner_app)
            .await,
        "55000",
        &["is being deleted"],
    );
    refused(
        sqlx::query("SELECT orgkeeper.my_llm_api_key($1)")
            .bind(org)
            .execute(&mut bob_app)
            .await,
        "55000",
        &["is being deleted"],
    );
    // Nor can anyone join it.
    let mut carol_app = app(&w.db, Some(carol)).await;
    refused(
        sqlx::query("SELECT orgkeeper.accept_invitation($1, $2)")
            .bind(carol)
            .bind(&token)
            .execute(&mut carol_app)
            .await,
        "55000",
        &["is being deleted"],
    );
    // Nobody can work in it again.
    let err = sqlx::query("UPDATE orgkeeper.users SET current_org_id = $1 WHERE id = $2")
        .bind(org)
        .bind(bob)
        .execute(&mut bob_app)
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // Nothing is freed: the name stays taken.
    let err = sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ('doomed co', $1)")
        .bind(bob)
        .execute(&mut bob_app)
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "23505");

    // The daemon finishes it: team gone, row gone, tombstone kept.
    let d = w.daemon();
    w.wait_idle().await;
    d.stop().await;
    assert_eq!(w.status(org).await, None, "the row is gone");
    assert_eq!(w.members(org).await, 0, "memberships went with it");
    assert!(w.sim.team(&org.to_string()).is_none(), "the team is gone");
    let t = w.tombstone(org).await.expect("a tombstone");
    assert_eq!(t.get::<String, _>("name"), "Doomed Co");
    assert_eq!(t.get::<String, _>("kind"), "team");
    assert_eq!(t.get::<Uuid, _>("created_by"), owner);
    assert_eq!(t.get::<Option<Uuid>, _>("deleted_by"), Some(owner));
    assert_eq!(t.get::<String, _>("deleted_via"), "delete_org");
    assert!(t.get::<bool, _>("ordered"));
    let cleanup: Value = t.get("cleanup");
    assert_eq!(cleanup["team"]["team_deleted"], true, "{cleanup}");
    assert_eq!(cleanup["team"]["team_id"], org.to_string(), "{cleanup}");
    assert_eq!(
        w.actions(org).await.last().unwrap(),
        &("litellm.deprovision_org".to_string(), "done".to_string())
    );
    assert!(!w
        .actions(org)
        .await
        .iter()
        .any(|(k, _)| k == "litellm.remove_member" || k == "litellm.delete_team"));

    // Tombstones are for operators: the application cannot read them.
    let err = sqlx::query("SELECT count(*) FROM orgkeeper.org_deleted")
        .execute(&mut owner_app)
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // Now the name is free again.
    team(&w.db, "Doomed Co", owner).await;
}

#[tokio::test]
async fn a_cleanup_that_fails_for_good_leaves_the_org_deprovisioning_and_visible_to_operators() {
    let w = World::new().await;
    let owner = user(&w.db, "owner@stuck.test").await;
    personal(&w.db, owner).await;
    let org = team(&w.db, "Stuck Co", owner).await;
    let d = w.daemon();
    w.wait_idle().await;
    assert_eq!(w.status(org).await.as_deref(), Some("active"));

    // LiteLLM refuses to delete teams (a 400 is not retried).
    w.sim.set_faults(Faults {
        fail: vec![("team/delete".into(), 400)],
        ..Faults::default()
    });
    let mut owner_app = app(&w.db, Some(owner)).await;
    delete_org(&mut owner_app, owner, org).await.unwrap();
    w.wait_idle().await;

    assert_eq!(
        w.actions(org).await.last().unwrap(),
        &("litellm.deprovision_org".to_string(), "failed".to_string())
    );
    assert_eq!(
        w.status(org).await.as_deref(),
        Some("deprovisioning"),
        "the org stays, deprovisioning"
    );
    assert!(w.tombstone(org).await.is_none(), "not deleted yet");
    assert!(w.sim.team(&org.to_string()).is_some());
    assert_eq!(seen_by(&w.db, owner, org).await, (0, 0, false));

    // Operators see it …
    let action: i64 = sqlx::query_scalar(
        "SELECT id FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'litellm.deprovision_org'",
    )
    .bind(org)
    .fetch_one(&w.db.pool)
    .await
    .unwrap();
    let listed = w.operator(&["list", "--status", "failed"]);
    let line = listed
        .lines()
        .find(|l| l.contains("litellm.deprovision_org"))
        .unwrap_or_else(|| panic!("the failed deletion is listed:\n{listed}"));
    assert!(line.contains(&org.to_string()), "{line}");
    assert!(line.contains(&action.to_string()), "{line}");
    let shown = w.operator(&["show", &action.to_string()]);
    assert!(shown.contains("400"), "the error is recorded: {shown}");

    // … and, once LiteLLM is fixed, a retry finishes the deletion.
    w.sim.set_faults(Faults::default());
    w.operator(&["retry", &action.to_string()]);
    w.wait_idle().await;
    d.stop().await;
    assert_eq!(w.status(org).await, None);
    assert!(w.sim.team(&org.to_string()).is_none());
    let t = w.tombstone(org).await.expect("a tombstone after the retry");
    assert_eq!(t.get::<Option<Uuid>, _>("deleted_by"), Some(owner));
    let cleanup: Value = t.get("cleanup");
    assert_eq!(cleanup["team"]["team_deleted"], true, "{cleanup}");
    assert_eq!(cleanup["action_id"], action, "{cleanup}");
}

#[tokio::test]
async fn a_foreign_team_is_left_alone_and_reported_in_the_tombstone() {
    let w = World::new().await;
    let owner = user(&w.db, "owner@foreign.test").await;
    personal(&w.db, owner).await;
    let org = team(&w.db, "Pointing Elsewhere", owner).await;
    let d = w.daemon();
    w.wait_idle().await;
    d.stop().await;
    // A DBA pointed the organization at a team orgkeeper did not make for it
    // (another organization's: its metadata names that one).
    let other = team(&w.db, "The Real Owner", owner).await;
    let d = w.daemon();
    w.wait_idle().await;
    d.stop().await;
    sqlx::query("UPDATE orgkeeper.org SET litellm_team_id = $2 WHERE id = $1")
        .bind(org)
        .bind(other.to_string())
        .execute(&w.db.pool)
        .await
        .unwrap();

    let mut owner_app = app(&w.db, Some(owner)).await;
    delete_org(&mut owner_app, owner, org).await.unwrap();
    let d = w.daemon();
    w.wait_idle().await;
    d.stop().await;

    assert_eq!(w.status(org).await, None);
    assert!(
        w.sim.team(&other.to_string()).is_some(),
        "the other organization's team is untouched"
    );
    let cleanup: Value = w.tombstone(org).await.unwrap().get("cleanup");
    assert_eq!(cleanup["team"]["team_deleted"], false, "{cleanup}");
    assert!(cleanup["team"]["team_foreign"].is_string(), "{cleanup}");
}

#[tokio::test]
async fn a_direct_delete_by_a_dba_is_immediate_and_leaves_a_tombstone_completed_by_the_daemon() {
    let w = World::new().await;
    let owner = user(&w.db, "owner@direct.test").await;
    let org = team(&w.db, "Direct", owner).await;
    let d = w.daemon();
    w.wait_idle().await;
    d.stop().await;

    // A DBA removes the row (trusted: the application has no DELETE).
    sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .execute(&w.db.pool)
        .await
        .unwrap();
    let t = w
        .tombstone(org)
        .await
        .expect("written by the DELETE's trigger");
    assert_eq!(t.get::<String, _>("deleted_via"), "direct_delete");
    let cleanup: Value = t.get("cleanup");
    assert_eq!(cleanup["team"]["status"], "enqueued", "{cleanup}");
    assert!(cleanup["role"].is_string(), "{cleanup}");

    let d = w.daemon();
    w.wait_idle().await;
    d.stop().await;
    assert!(w.sim.team(&org.to_string()).is_none());
    assert_eq!(
        w.actions(org).await.last().unwrap(),
        &("litellm.delete_team".to_string(), "done".to_string())
    );
    let cleanup: Value = w.tombstone(org).await.unwrap().get("cleanup");
    assert_eq!(cleanup["team"]["team_deleted"], true, "{cleanup}");
}

#[tokio::test]
async fn the_daemon_role_finishes_a_deletion_though_it_deletes_nothing_itself() {
    let db = TestDb::migrated().await;
    let owner = user(&db, "owner@roles.test").await;
    personal(&db, owner).await;
    let org = team(&db, "Role Bound", owner).await;
    let mut owner_app = app(&db, Some(owner)).await;
    delete_org(&mut owner_app, owner, org).await.unwrap();

    let mut daemon = db.connect().await;
    sqlx::query("SET ROLE orgkeeper_daemon")
        .execute(&mut daemon)
        .await
        .unwrap();
    // No DELETE privilege of its own …
    let err = sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .execute(&mut daemon)
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    // … but the fenced write-back does it. (Earlier actions of the org first.)
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET status = 'cancelled', finished_at = now()
          WHERE kind <> 'litellm.deprovision_org'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let team_id: String =
        sqlx::query_scalar("SELECT team_id FROM orgkeeper.deprovisioning_context($1)")
            .bind(org)
            .fetch_one(&mut daemon)
            .await
            .unwrap();
    assert_eq!(team_id, org.to_string());
    let (id, lease): (i64, String) =
        sqlx::query_as("SELECT id, locked_by FROM orgkeeper.claim_actions('d1', 10, '1 minute')")
            .fetch_one(&mut daemon)
            .await
            .unwrap();
    let wrong: String =
        sqlx::query_scalar("SELECT orgkeeper.record_org_deleted($1, 'someone-else/1', '{}')")
            .bind(id)
            .fetch_one(&mut daemon)
            .await
            .unwrap();
    assert_eq!(wrong, "lease_lost", "fenced on the lease");
    let recorded: String = sqlx::query_scalar(
        "SELECT orgkeeper.record_org_deleted($1, $2, '{\"team_absent\": true}')",
    )
    .bind(id)
    .bind(&lease)
    .fetch_one(&mut daemon)
    .await
    .unwrap();
    assert_eq!(recorded, "done");
    let (gone, tombstones): (bool, i64) = sqlx::query_as(
        "SELECT NOT EXISTS (SELECT 1 FROM orgkeeper.org WHERE id = $1),
                (SELECT count(*) FROM orgkeeper.org_deleted WHERE id = $1)",
    )
    .bind(org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(gone);
    assert_eq!(tombstones, 1);
}

#[tokio::test]
async fn an_invited_member_cannot_accept_a_membership_of_an_org_being_deleted() {
    let db = TestDb::migrated().await;
    let owner = crate::support::user(&db, "owner@example.com").await;
    let guest = crate::support::user(&db, "guest@example.com").await;
    crate::support::personal(&db, owner).await;
    let org = crate::support::team(&db, "Going", owner).await;
    let mut app_owner = crate::support::app(&db, Some(owner)).await;
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(org)
        .bind(guest)
        .execute(&mut app_owner)
        .await
        .unwrap();
    delete_org(&mut app_owner, owner, org).await.unwrap();
    let mut app_guest = crate::support::app(&db, Some(guest)).await;
    let err = sqlx::query("SELECT orgkeeper.accept_membership($1, $2)")
        .bind(guest)
        .bind(org)
        .execute(&mut app_guest)
        .await
        .unwrap_err();
    let (code, message) = crate::support::db_error(&err);
    assert_eq!(code, "55000");
    assert!(message.contains("is being deleted"), "{message}");
    let status: String = sqlx::query_scalar(
        "SELECT status FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $2",
    )
    .bind(org)
    .bind(guest)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "invited", "nothing changed");
}

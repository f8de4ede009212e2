//! Stories about the LiteLLM provisioning saga: the daemon turns committed
//! org rows into exactly one team, user membership and key each, whatever
//! crashes, retries, faults and replicas happen on the way.

use crate::support::{
    daemon_config, daemon_settings, insert_orgs, status_counts, wait_until, TestDaemon, TestDb,
};
use orgkeeper::litellm::{Faults, LiteLlmSimulator};
use orgkeeper::secrets::Place;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

fn daemon(
    db: &TestDb,
    sim: &LiteLlmSimulator,
    key: &SecretString,
    worker: &str,
    lease: Duration,
) -> TestDaemon {
    TestDaemon::start(daemon_config(
        &db.url,
        sim,
        key,
        daemon_settings(worker, lease),
    ))
}

async fn all_active(pool: &PgPool, n: i64) -> bool {
    status_counts(pool).await.get("active").copied() == Some(n)
}

/// Asserts the simulator holds exactly one team for each org, with exactly
/// the owner as member and exactly one key.
async fn assert_one_of_each(db: &TestDb, sim: &LiteLlmSimulator, orgs: &[Uuid]) {
    for org in orgs {
        let owner: Uuid = sqlx::query_scalar("SELECT created_by FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let team = sim
            .team(&org.to_string())
            .unwrap_or_else(|| panic!("no team for org {org}"));
        let members: Vec<&str> = team.members.iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(
            members,
            vec![owner.to_string().as_str()],
            "members of {org}"
        );
        assert_eq!(team.keys.len(), 1, "keys of {org}");
        assert_eq!(
            team.keys[0].alias.as_deref(),
            Some(format!("OpenHands Cloud - user {owner} - org {org}").as_str())
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.teams, orgs.len(), "teams");
    assert_eq!(stats.keys, orgs.len(), "keys");
    assert_eq!(stats.memberships, orgs.len(), "memberships");
    assert_eq!(stats.users, orgs.len(), "users");
}

#[tokio::test]
async fn two_hundred_orgs_become_active_with_one_team_membership_and_encrypted_key_each() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Bulk", 200).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);

    wait_until(LONG, "200 orgs active", || all_active(&db.pool, 200)).await;
    d.stop().await;
    assert_one_of_each(&db, &sim, &orgs).await;

    let keyring = orgkeeper::secrets::Keyring::new(&key, &[], None).unwrap();
    type Row = (Uuid, Uuid, Option<String>, String, String, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT o.id, m.user_id, o.llm_api_key, m.llm_api_key, o.litellm_team_id, o.llm_model
           FROM orgkeeper.org o JOIN orgkeeper.org_member m ON m.org_id = o.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 200);
    let mut plains = std::collections::HashSet::new();
    for (org, owner, org_key, member_key, team_id, model) in rows {
        assert_eq!(org_key, None, "no key is shared by the organization");
        assert!(member_key.starts_with("ok2:"), "ciphertext at rest");
        let plain = keyring
            .decrypt(&Place::member_key(org, owner), &member_key)
            .unwrap();
        assert!(
            !member_key.contains(&plain.expose_secret()[3..]),
            "no plaintext at rest"
        );
        assert!(plain.expose_secret().starts_with("sk-"));
        assert!(
            plains.insert(plain.expose_secret().to_string()),
            "keys differ"
        );
        assert!(
            sim.has_key(plain.expose_secret()),
            "the stored key is the one LiteLLM knows"
        );
        assert!(Uuid::parse_str(&team_id).is_ok());
        assert_eq!(model.as_deref(), Some("litellm_proxy/test-model"));
    }
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM orgkeeper.pending_external_actions GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec![("done".to_string(), 200)]);
    let saved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE progress ? 'key'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(saved, 200, "every key was saved before /key/generate");
    assert_eq!(
        sim.stats().calls("key/info"),
        0,
        "first attempts trust the 200 of a fresh key"
    );
}

/// Kills the daemon right after LiteLLM step `step` succeeded for the one
/// org, restarts one, and checks the org ends active with one of each.
async fn kill_after_step(step: usize) {
    const STEPS: [&str; 4] = ["team/new", "user/new", "team/member_add", "key/generate"];
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    // Hold the daemon after the step: the next step fails transiently, or,
    // after the last step, the write-back waits for a lock on the org row.
    let mut blocker = db.connect().await;
    let orgs = insert_orgs(&db.pool, "Crash", 1).await;
    let mut blocking_tx = None;
    if step < STEPS.len() {
        sim.set_faults(Faults {
            fail: vec![(STEPS[step].to_string(), 503)],
            ..Faults::default()
        });
    } else {
        let mut tx = sqlx::Connection::begin(&mut blocker).await.unwrap();
        sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR UPDATE")
            .bind(orgs[0])
            .execute(&mut *tx)
            .await
            .unwrap();
        blocking_tx = Some(tx);
    }
    let first = daemon(&db, &sim, &key, "doomed", Duration::from_secs(1));
    let done_step = STEPS[step - 1];
    wait_until(LONG, "the step to succeed", || async {
        sim.stats().succeeded(done_step) >= 1
    })
    .await;
    first.kill().await;
    sim.set_faults(Faults::default());

    let second = daemon(&db, &sim, &key, "rescuer", Duration::from_secs(5));
    if let Some(tx) = blocking_tx {
        // The killed daemon's write-back is still queued on the lock; release
        // it only once the rescuer owns the action, so the fence must refuse it.
        wait_until(LONG, "the rescuer to take the action over", || async {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT locked_by FROM orgkeeper.pending_external_actions")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            owner.as_deref().is_some_and(|o| o.starts_with("rescuer/"))
        })
        .await;
        tx.rollback().await.unwrap();
    }
    wait_until(LONG, "the org to become active", || all_active(&db.pool, 1)).await;
    second.stop().await;
    assert_one_of_each(&db, &sim, &orgs).await;
    if step == STEPS.len() {
        let reused: serde_json::Value = sqlx::query_scalar(
            "SELECT result->'key_reused' FROM orgkeeper.pending_external_actions",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            reused, true,
            "the retry found the key it had chosen instead of making another"
        );
    }
}

#[tokio::test]
async fn a_daemon_killed_after_the_team_step_leaves_one_of_each() {
    kill_after_step(1).await;
}

#[tokio::test]
async fn a_daemon_killed_after_the_user_step_leaves_one_of_each() {
    kill_after_step(2).await;
}

#[tokio::test]
async fn a_daemon_killed_after_the_membership_step_leaves_one_of_each() {
    kill_after_step(3).await;
}

#[tokio::test]
async fn a_daemon_killed_after_the_key_step_leaves_one_of_each() {
    kill_after_step(4).await;
}

#[tokio::test]
async fn calls_that_succeed_but_answer_502_create_nothing_twice() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        perform_then_502: true,
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Echo", 20).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);
    wait_until(LONG, "20 orgs active", || all_active(&db.pool, 20)).await;
    d.stop().await;
    assert!(
        sim.stats().status_count(502) >= 20 * 4,
        "every first call answered 502"
    );
    assert_one_of_each(&db, &sim, &orgs).await;
}

#[tokio::test]
async fn thirty_percent_server_errors_and_latency_still_end_active_with_attempts_recorded() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        error_rate: 0.3,
        latency_ms: (0, 20),
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Flaky", 100).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);
    wait_until(Duration::from_secs(120), "100 orgs active", || {
        all_active(&db.pool, 100)
    })
    .await;
    d.stop().await;
    assert_one_of_each(&db, &sim, &orgs).await;
    let (retried, max_attempts): (i64, i32) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE jsonb_array_length(errors) > 0), max(attempts)
           FROM orgkeeper.pending_external_actions",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        retried > 0 && max_attempts > 1,
        "retries were needed and recorded"
    );
    let (errors, attempts): (i64, i32) = sqlx::query_as(
        "SELECT jsonb_array_length(errors)::int8, attempts FROM orgkeeper.pending_external_actions
          WHERE jsonb_array_length(errors) > 0 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(errors as i32, attempts - 1, "one error per failed attempt");
}

#[tokio::test]
async fn a_permanent_key_error_deletes_the_team_and_fails_the_org_with_both_errors() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        fail: vec![("key/generate".into(), 400)],
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Doomed", 1).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);
    wait_until(LONG, "the org to fail", || async {
        status_counts(&db.pool).await.get("failed") == Some(&1)
    })
    .await;
    d.stop().await;

    assert!(
        sim.team(&orgs[0].to_string()).is_none(),
        "team deleted at LiteLLM"
    );
    assert_eq!(sim.stats().teams, 0);
    let error: serde_json::Value =
        sqlx::query_scalar("SELECT provisioning_error FROM orgkeeper.org")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("key/generate"),
        "{error}"
    );
    assert_eq!(error["cleanup"]["team_deleted"], true, "{error}");
    // The report knows the team was made by the attempt that failed (its
    // note was saved after the claim read the action's progress).
    assert_eq!(error["cleanup"]["team_created"], true, "{error}");
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM orgkeeper.pending_external_actions")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("compensated", 1),
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn an_org_deleted_while_provisioning_is_in_flight_leaves_nothing_dangling() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    // Provisioning stalls on the key step while the org is deleted.
    sim.set_faults(Faults {
        fail: vec![("key/generate".into(), 503)],
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Fleeting", 1).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);
    wait_until(LONG, "the team to exist", || async {
        sim.stats().teams == 1
    })
    .await;
    sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
        .bind(orgs[0])
        .execute(&db.pool)
        .await
        .unwrap();
    sim.set_faults(Faults::default());
    wait_until(LONG, "both actions to finish", || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE finished_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        open == 0
    })
    .await;
    d.stop().await;

    let stats = sim.stats();
    assert_eq!(
        (stats.teams, stats.keys, stats.memberships),
        (0, 0, 0),
        "nothing dangling at LiteLLM"
    );
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, status FROM orgkeeper.pending_external_actions ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(actions[1], ("litellm.delete_team".into(), "done".into()));
    assert!(
        actions[0].1 == "compensated" || actions[0].1 == "done",
        "provisioning ended cleanly: {actions:?}"
    );
}

/// The same race through `orgkeeper.delete_org`, as the application deletes:
/// the organization turns deprovisioning while its provisioning is retrying;
/// the provisioning gives up without making it active again (and deletes
/// the team it made), the deprovisioning runs after it (same subject), and
/// only a tombstone is left.
#[tokio::test]
async fn an_org_deleted_through_delete_org_while_provisioning_is_in_flight_is_never_made_active() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        fail: vec![("key/generate".into(), 503)],
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    let owner = crate::support::user(&db, "owner@fleeting.test").await;
    crate::support::personal(&db, owner).await;
    let org = crate::support::team(&db, "Fleeting Co", owner).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);
    wait_until(LONG, "the team to exist", || async {
        sim.team(&org.to_string()).is_some()
    })
    .await;
    let mut owner_app = crate::support::app(&db, Some(owner)).await;
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(owner)
        .bind(org)
        .execute(&mut owner_app)
        .await
        .unwrap();
    let status: String =
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "deprovisioning");
    sim.set_faults(Faults::default());
    wait_until(LONG, "every action to finish", || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE finished_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        open == 0
    })
    .await;
    d.stop().await;

    assert!(sim.team(&org.to_string()).is_none(), "no team dangling");
    let keys_of_org = sim
        .user_keys(&owner.to_string())
        .into_iter()
        .filter(|k| k.team_id.as_deref() == Some(org.to_string().as_str()))
        .count();
    assert_eq!(keys_of_org, 0, "no key dangling");
    let actions: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, status FROM orgkeeper.pending_external_actions WHERE org_id = $1 ORDER BY id",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        vec![
            ("litellm.provision_org".into(), "compensated".into()),
            ("litellm.deprovision_org".into(), "done".into()),
        ],
        "provisioning gave up, then the deletion ran"
    );
    let gone: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM orgkeeper.org WHERE id = $1)")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(gone);
    let (deleted_by, cleanup): (Option<Uuid>, serde_json::Value) =
        sqlx::query_as("SELECT deleted_by, cleanup FROM orgkeeper.org_deleted WHERE id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(deleted_by, Some(owner));
    assert_eq!(cleanup["team"]["team_deleted"], false, "{cleanup}");
    assert_eq!(
        cleanup["team"]["team_absent"], true,
        "provisioning's compensation deleted it: {cleanup}"
    );
}

async fn replicas_provision_every_org_once(replicas: usize) {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Fleet", 1000).await;
    let daemons: Vec<TestDaemon> = (0..replicas)
        .map(|i| daemon(&db, &sim, &key, &format!("replica-{i}"), LONG))
        .collect();
    wait_until(Duration::from_secs(180), "1000 orgs active", || {
        all_active(&db.pool, 1000)
    })
    .await;
    for d in daemons {
        d.stop().await;
    }
    assert_one_of_each(&db, &sim, &orgs).await;
    assert_eq!(
        sim.stats().calls("team/new"),
        1000,
        "each team created by exactly one call"
    );
}

#[tokio::test]
async fn two_daemons_provision_a_thousand_orgs_each_exactly_once() {
    replicas_provision_every_org_once(2).await;
}

#[tokio::test]
async fn four_daemons_provision_a_thousand_orgs_each_exactly_once() {
    replicas_provision_every_org_once(4).await;
}

#[tokio::test]
async fn a_database_restart_under_the_daemon_is_survived_without_operator_action() {
    let cluster =
        orgkeeper::pgcluster::PgCluster::start(orgkeeper::pgcluster::Durability::Throwaway)
            .unwrap();
    let url = cluster.url("postgres");
    orgkeeper::db::migrate(&url).await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let config = daemon_config(
        &url,
        &sim,
        &key,
        daemon_settings("w1", Duration::from_secs(2)),
    );
    let d = TestDaemon::start(config);
    insert_orgs(&pool, "Before", 20).await;
    wait_until(LONG, "the first 20 active", || all_active(&pool, 20)).await;

    cluster.restart().unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    insert_orgs(&pool, "After", 20).await;
    wait_until(LONG, "all 40 active after the restart", || {
        all_active(&pool, 40)
    })
    .await;
    d.stop().await;
    assert_eq!(sim.stats().teams, 40);
}

#[tokio::test]
async fn an_expired_lease_passes_the_action_to_another_replica_and_fences_the_late_writer() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Frozen", 1).await;

    // A replica claims the action, then freezes past its lease.
    let frozen = orgkeeper::outbox::Outbox::new(
        db.pool.clone(),
        "frozen".into(),
        Duration::from_millis(300),
    );
    let claimed = frozen.claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let d = daemon(&db, &sim, &key, "rescuer", Duration::from_secs(30));
    wait_until(LONG, "the rescuer to finish it", || all_active(&db.pool, 1)).await;
    d.stop().await;

    // The frozen replica wakes up and tries to write its outcome: refused.
    let stale = &claimed[0];
    assert_eq!(stale.lease, "frozen/1");
    assert!(!frozen
        .complete(stale, &serde_json::json!({"late": true}))
        .await
        .unwrap());
    assert!(!frozen
        .retry_later(stale, "late", Duration::ZERO)
        .await
        .unwrap());
    assert!(!frozen.begin_compensation(stale, "late").await.unwrap());
    assert!(!frozen.extend_lease(stale).await.unwrap());
    let late: String = sqlx::query_scalar(
        "SELECT orgkeeper.record_org_provisioned($1, $2, 'bogus-team', gen_random_uuid(), 'm', 'u', 'ok1:x:y', '{}')",
    )
    .bind(stale.id)
    .bind(&stale.lease)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(late, "lease_lost");
    let (status, team, result): (String, String, serde_json::Value) = sqlx::query_as(
        "SELECT a.status, o.litellm_team_id, a.result FROM orgkeeper.pending_external_actions a
           JOIN orgkeeper.org o ON o.id = a.org_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "done");
    assert_eq!(team, orgs[0].to_string());
    assert!(result.get("late").is_none());
    assert_one_of_each(&db, &sim, &orgs).await;
}

#[tokio::test]
async fn deleting_a_provisioned_org_deletes_its_team_and_keys() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Shortlived", 2).await;
    let d = daemon(&db, &sim, &key, "w1", LONG);
    wait_until(LONG, "both active", || all_active(&db.pool, 2)).await;
    sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
        .bind(orgs[0])
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until(LONG, "the team deletion to finish", || async {
        let s: Option<String> = sqlx::query_scalar(
            "SELECT status FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.delete_team'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        s.as_deref() == Some("done")
    })
    .await;
    d.stop().await;
    assert!(sim.team(&orgs[0].to_string()).is_none());
    assert!(sim.team(&orgs[1].to_string()).is_some());
    assert_eq!(sim.stats().keys, 1, "the deleted team's key went with it");
}

#[tokio::test]
async fn a_replica_that_loses_its_lease_mid_saga_stops_calling_litellm() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    // Every call takes 1.5 s, so the daemon is inside the saga when its lease is taken.
    sim.set_faults(Faults {
        latency_ms: (1500, 1500),
        ..Faults::default()
    });
    let key = orgkeeper::secrets::generate_key();
    let orgs = insert_orgs(&db.pool, "Stolen", 1).await;
    let d = daemon(&db, &sim, &key, "slow", Duration::from_secs(1));
    wait_until(LONG, "the team step to succeed", || async {
        sim.stats().succeeded("team/new") >= 1
    })
    .await;

    // Another replica takes the action over (as after an expired lease).
    sqlx::query("UPDATE orgkeeper.pending_external_actions SET locked_by = 'thief/9', locked_until = now() + interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    let calls_at_steal = sim.stats().total_requests();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = sim.stats();
    assert!(
        stats.total_requests() <= calls_at_steal + 1,
        "at most the call in flight at the steal completes: {} -> {}",
        calls_at_steal,
        stats.total_requests()
    );
    assert_eq!(
        stats.calls("key/generate"),
        0,
        "the abandoned saga made no key"
    );

    // The thief dies; its lease expires and the first replica finishes the work.
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET locked_until = now() - interval '1 second'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sim.set_faults(Faults::default());
    wait_until(LONG, "the org to become active", || all_active(&db.pool, 1)).await;
    d.stop().await;
    assert_one_of_each(&db, &sim, &orgs).await;
}

#[tokio::test]
async fn no_committed_org_waits_for_the_poll_while_the_daemon_is_idle() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let mut settings = daemon_settings("w1", LONG);
    settings.poll = Duration::from_secs(60);
    let d = TestDaemon::start(daemon_config(&db.url, &sim, &key, settings));
    // The daemon's first poll happens at start; from then on only wake-ups help.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 200 orgs at 50/s from 4 connections: each inserts every 80 ms, staggered.
    let writers: Vec<_> = (0..4u32)
        .map(|c| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20 * c as u64)).await;
                let mut tick = tokio::time::interval(Duration::from_millis(80));
                for i in 0..50 {
                    tick.tick().await;
                    sqlx::query("WITH u AS (INSERT INTO orgkeeper.users (id) VALUES (gen_random_uuid()) RETURNING id)
                                 INSERT INTO orgkeeper.org (name, created_by) SELECT $1, id FROM u")
                        .bind(format!("Wake {c}-{i}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    wait_until(Duration::from_secs(20), "200 orgs active", || {
        all_active(&db.pool, 200)
    })
    .await;
    d.stop().await;
    let (slowest, over): (f64, i64) = sqlx::query_as(
        "SELECT max(extract(epoch FROM finished_at - created_at))::float8,
                count(*) FILTER (WHERE finished_at - created_at > interval '1 second')
           FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.provision_org'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        over, 0,
        "{over} orgs waited over 1 s (slowest {slowest:.3} s): a wake-up was lost"
    );
}

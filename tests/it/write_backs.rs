//! Stories about batched write-backs: the completions, retries and progress
//! saves of actions finishing together are written in one statement, and
//! the fence still holds per row — a task whose lease was taken over writes
//! nothing, in the same batch as tasks whose writes land.

use crate::support::{insert_orgs, table_counter, without_autovacuum, TestDb};
use futures::future::join_all;
use orgkeeper::outbox::{Action, Outbox};
use serde_json::json;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(60);

/// Six provisioning actions claimed by replica "a", the fourth of which
/// then expired and was taken over by replica "b" ([`take_over`]).
async fn claimed_with_one_taken_over(db: &TestDb) -> (Outbox, Vec<Action>, usize) {
    insert_orgs(&db.pool, "Batched", 6).await;
    let a = Outbox::new(db.pool.clone(), "a".into(), LEASE);
    let mut claimed = a.claim(10).await.unwrap();
    claimed.sort_by_key(|c| c.id);
    assert_eq!(claimed.len(), 6);
    let stale = 3;
    take_over(db, &a, &claimed[stale]).await;
    (a, claimed, stale)
}

/// `action`, claimed by replica `a`, expires and replica "b" takes it over
/// (sweep, claim): a's task for it holds a stale token.
async fn take_over(db: &TestDb, a: &Outbox, action: &Action) {
    sqlx::query("UPDATE orgkeeper.pending_external_actions SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(action.id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(a.sweep().await.unwrap(), 1);
    let b = Outbox::new(db.pool.clone(), "b".into(), LEASE);
    let taken = b.claim(10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, action.id);
    assert_eq!(taken[0].lease, "b/2");
}

/// Runs `write` for every action at once while each counts as running (so
/// the batcher gathers them all), and returns each one's outcome.
async fn all_at_once<'a, F, Fut>(outbox: &Outbox, actions: &'a [Action], write: F) -> Vec<bool>
where
    F: Fn(&'a Action) -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<bool>>,
{
    let running: Vec<_> = actions.iter().map(|_| outbox.running()).collect();
    let outcomes = join_all(actions.iter().map(write)).await;
    drop(running);
    outcomes.into_iter().map(Result::unwrap).collect()
}

/// The stale row as it is now: status, lease, result, progress, last error.
async fn row(
    db: &TestDb,
    id: i64,
) -> (
    String,
    Option<String>,
    Option<serde_json::Value>,
    serde_json::Value,
    Option<String>,
) {
    sqlx::query_as(
        "SELECT status, locked_by, result, progress, last_error FROM orgkeeper.pending_external_actions WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// How many transactions last wrote the rows of `ids`.
async fn writing_transactions(db: &TestDb, ids: &[i64]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM orgkeeper.pending_external_actions WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn live_ids(actions: &[Action], stale: usize) -> Vec<i64> {
    (0..actions.len())
        .filter(|i| *i != stale)
        .map(|i| actions[i].id)
        .collect()
}

/// Each action (in id order) with its status and result, its
/// organization's provisioning status and the owner membership's key.
async fn actions_with_owner_keys(
    db: &TestDb,
) -> Vec<(
    i64,
    String,
    Option<serde_json::Value>,
    String,
    Option<String>,
)> {
    sqlx::query_as(
        "SELECT a.id, a.status, a.result, o.provisioning_status, m.llm_api_key
           FROM orgkeeper.pending_external_actions a
           JOIN orgkeeper.org o ON o.id = a.org_id
           JOIN orgkeeper.org_member m ON m.org_id = o.id AND m.user_id = o.created_by
          ORDER BY a.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_stale_lease_in_a_batch_of_completions_writes_nothing_while_the_live_ones_land() {
    let db = TestDb::migrated().await;
    let (a, actions, stale) = claimed_with_one_taken_over(&db).await;

    let landed = all_at_once(&a, &actions, |action| async {
        a.complete(action, &json!({ "by": "a", "id": action.id }))
            .await
    })
    .await;

    let expected: Vec<bool> = (0..actions.len()).map(|i| i != stale).collect();
    assert_eq!(
        landed, expected,
        "each task learns whether its own write landed"
    );
    assert_eq!(
        row(&db, actions[stale].id).await,
        ("running".into(), Some("b/2".into()), None, json!({}), None),
        "the row taken over is untouched"
    );
    let live = live_ids(&actions, stale);
    let done: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, status, result FROM orgkeeper.pending_external_actions WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&live)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (id, status, result) in done {
        assert_eq!(status, "done");
        assert_eq!(result, json!({ "by": "a", "id": id }));
    }
    assert_eq!(
        writing_transactions(&db, &live).await,
        1,
        "the five completions were written by one statement"
    );
}

#[tokio::test]
async fn a_stale_lease_in_a_batch_of_retries_and_progress_saves_writes_nothing_for_its_row() {
    let db = TestDb::migrated().await;
    let (a, actions, stale) = claimed_with_one_taken_over(&db).await;
    let expected: Vec<bool> = (0..actions.len()).map(|i| i != stale).collect();
    let live = live_ids(&actions, stale);

    let saved = all_at_once(&a, &actions, |action| async {
        a.save_progress(action, &json!({ "step": action.id })).await
    })
    .await;
    assert_eq!(saved, expected);
    assert_eq!(writing_transactions(&db, &live).await, 1);
    let progress: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT id, progress FROM orgkeeper.pending_external_actions WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&live)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(progress
        .iter()
        .all(|(id, p)| p.get("step") == Some(&json!(id))));

    let retried = all_at_once(&a, &actions, |action| {
        // Jittered delays carry nanoseconds; an interval keeps microseconds.
        a.retry_later(action, "flaky", Duration::from_nanos(3_600_000_000_789))
    })
    .await;
    assert_eq!(retried, expected);
    assert_eq!(writing_transactions(&db, &live).await, 1);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions
          WHERE id = ANY($1) AND status = 'pending' AND locked_by IS NULL
            AND last_error = 'flaky' AND run_after > now() + interval '59 minutes'
            AND jsonb_array_length(errors) = 1",
    )
    .bind(&live)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(pending, 5);
    assert_eq!(
        row(&db, actions[stale].id).await,
        ("running".into(), Some("b/2".into()), None, json!({}), None),
        "neither the progress save nor the retry touched the row taken over"
    );
}

#[tokio::test]
async fn a_batch_of_provisioning_write_backs_leaves_a_stale_lease_s_org_pending_and_an_org_being_deleted_alone(
) {
    let db = TestDb::migrated().await;
    let (_a, actions, stale) = claimed_with_one_taken_over(&db).await;
    let owners: Vec<uuid::Uuid> = actions.iter().map(|a| a.user_id.unwrap()).collect();
    let n = actions.len();
    // Action 1's organization is being deleted meanwhile: it is never made
    // active again (its deletion removes the team just made).
    let deleted = 1;
    sqlx::query(
        "UPDATE orgkeeper.org SET provisioning_status = 'deprovisioning', deletion_requested_at = now()
          WHERE id = $1",
    )
    .bind(actions[deleted].org_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let outcomes: Vec<(i64, String)> = sqlx::query_as(
        "SELECT action_id, outcome FROM orgkeeper.record_orgs_provisioned($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(actions.iter().map(|a| a.id).collect::<Vec<_>>())
    .bind(actions.iter().map(|a| a.lease.clone()).collect::<Vec<_>>())
    .bind(
        actions
            .iter()
            .map(|a| a.org_id.unwrap().to_string())
            .collect::<Vec<_>>(),
    )
    .bind(&owners)
    .bind(vec!["model"; n])
    .bind(vec!["https://llm"; n])
    .bind(vec!["ok1:key"; n])
    .bind(vec![json!({}); n])
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<(i64, String)> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let outcome = match i {
                _ if i == stale => "lease_lost",
                _ if i == deleted => "org_gone",
                _ => "done",
            };
            (a.id, outcome.into())
        })
        .collect();
    assert_eq!(outcomes, expected);
    for (i, (id, status, _, org_status, key)) in
        actions_with_owner_keys(&db).await.into_iter().enumerate()
    {
        assert_eq!(id, actions[i].id);
        if i == stale {
            assert_eq!(
                (status.as_str(), org_status.as_str(), key),
                ("running", "pending", None)
            );
        } else if i == deleted {
            assert_eq!(
                (status.as_str(), org_status.as_str(), key),
                ("running", "deprovisioning", None)
            );
        } else {
            assert_eq!(
                (status.as_str(), org_status.as_str(), key.as_deref()),
                ("done", "active", Some("ok1:key"))
            );
        }
    }
    // Each written org got its own action's team; the others none.
    let teams: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT o.litellm_team_id FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, ord)
           JOIN orgkeeper.org o ON o.id = u.id ORDER BY u.ord",
    )
    .bind(
        actions
            .iter()
            .map(|a| a.org_id.unwrap())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<Option<String>> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| (i != stale && i != deleted).then(|| a.org_id.unwrap().to_string()))
        .collect();
    assert_eq!(teams, expected);
}

#[tokio::test]
async fn a_batch_of_member_keys_stores_the_live_ones_and_leaves_a_stale_or_departed_members_action_running(
) {
    let db = TestDb::migrated().await;
    let (_a, actions, stale) = claimed_with_one_taken_over(&db).await;
    // Action 1's member was invited to its organization but never accepted:
    // not an active member.
    let departed = 1;
    let invited = uuid::Uuid::new_v4();
    sqlx::query(
        "WITH u AS (INSERT INTO orgkeeper.users (id) VALUES ($2) RETURNING id)
         INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
         SELECT $1, u.id, orgkeeper.role_id('member'), 'invited' FROM u",
    )
    .bind(actions[departed].org_id.unwrap())
    .bind(invited)
    .execute(&db.pool)
    .await
    .unwrap();
    let users: Vec<uuid::Uuid> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i == departed {
                invited
            } else {
                a.user_id.unwrap()
            }
        })
        .collect();
    let keys: Vec<String> = (0..actions.len()).map(|i| format!("ok1:key{i}")).collect();
    let outcomes: Vec<(i64, String)> = sqlx::query_as(
        "SELECT action_id, outcome FROM orgkeeper.record_member_keys($1, $2, $3, $4, $5)",
    )
    .bind(actions.iter().map(|a| a.id).collect::<Vec<_>>())
    .bind(actions.iter().map(|a| a.lease.clone()).collect::<Vec<_>>())
    .bind(&users)
    .bind(&keys)
    .bind(vec![json!({"stored": true}); actions.len()])
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let outcome = |i: usize| match i {
        _ if i == stale => "lease_lost",
        _ if i == departed => "member_gone",
        _ => "done",
    };
    let expected: Vec<(i64, String)> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id, outcome(i).into()))
        .collect();
    assert_eq!(outcomes, expected);
    for (i, (id, status, result, _, key)) in
        actions_with_owner_keys(&db).await.into_iter().enumerate()
    {
        assert_eq!(id, actions[i].id);
        if outcome(i) == "done" {
            assert_eq!(
                (status.as_str(), result, key),
                ("done", Some(json!({"stored": true})), Some(keys[i].clone()))
            );
        } else {
            assert_eq!(
                (status.as_str(), result, key),
                ("running", None, None),
                "action {i}"
            );
        }
    }
    let invited_key: Option<String> = sqlx::query_scalar(
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $2",
    )
    .bind(actions[departed].org_id.unwrap())
    .bind(invited)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(invited_key, None, "an invited member gets no key");
}

/// Rows read from a table, by index or by scan.
const OUTBOX_ROWS_READ: &str = "idx_tup_fetch + seq_tup_read";

/// A queue whose statistics were taken while it held only finished
/// actions, as after a quiet night (a history, nothing leased or waiting);
/// autovacuum is off for it, so they stay so.
async fn quiet_queue(db: &TestDb) {
    without_autovacuum(db, "pending_external_actions").await;
    insert_orgs(&db.pool, "History", 3_000).await;
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET status = 'done', finished_at = now() WHERE status = 'pending'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE orgkeeper.pending_external_actions")
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_after_a_burst_on_a_quiet_queue_probes_each_candidate_s_subject() {
    // A burst on a quiet queue: 1,000 organizations with four actions each,
    // the last three waiting for the first — and due earlier, so every claim
    // meets all 3,000 of them first and must pass them by. The planner,
    // trusting the idle queue's statistics, turned the claim's per-subject
    // check into a full scan of the unfinished actions for every candidate
    // (millions of rows read per claim here); a claim must read a few rows
    // per candidate, call after call (past the fifth, plpgsql keeps a
    // generic plan).
    let db = TestDb::migrated().await;
    quiet_queue(&db).await;
    let orgs = insert_orgs(&db.pool, "Burst", 1_000).await;
    sqlx::query(
        "INSERT INTO orgkeeper.pending_external_actions (kind, org_id, payload, run_after)
         SELECT 'litellm.add_member', o.id, '{}', now() - interval '1 hour'
           FROM unnest($1::uuid[]) AS o(id), generate_series(1, 3) ORDER BY o.id",
    )
    .bind(&orgs)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.connect().await;
    let mut subjects = std::collections::HashSet::new();
    for call in 1..=8 {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        let before = table_counter(&mut tx, "pending_external_actions", OUTBOX_ROWS_READ).await;
        let leased: Vec<(String, uuid::Uuid)> = sqlx::query_as(
            "SELECT kind, subject FROM orgkeeper.claim_actions('burst', 64, interval '1 hour')",
        )
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let read =
            table_counter(&mut tx, "pending_external_actions", OUTBOX_ROWS_READ).await - before;
        tx.commit().await.unwrap();
        assert_eq!(leased.len(), 64, "claim {call}");
        assert!(
            read <= 3 * 4_000,
            "claim {call} read {read} outbox rows to lease 64 (4,000 unfinished, 3,000 waiting ahead)"
        );
        // Only each organization's first action, never one still waiting.
        for (kind, subject) in leased {
            assert_eq!(kind, "litellm.provision_org", "claim {call}");
            assert!(subjects.insert(subject), "claim {call}: {subject} twice");
        }
    }
}

#[tokio::test]
async fn a_completion_reads_its_own_row_however_many_actions_are_leased() {
    // A quiet queue, then 300 actions leased at once: a fenced write-back
    // must still find its row by primary key, not scan the leased or
    // unfinished ones.
    let db = TestDb::migrated().await;
    quiet_queue(&db).await;
    insert_orgs(&db.pool, "Busy", 300).await;
    let leased: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, locked_by FROM orgkeeper.claim_actions('busy', 300, interval '1 hour') ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(leased.len(), 300);

    // One session, as a daemon's: past the fifth call plpgsql keeps a
    // generic plan for the completion.
    let mut conn = db.connect().await;
    for (id, token) in leased.iter().take(8) {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        let before = table_counter(&mut tx, "pending_external_actions", OUTBOX_ROWS_READ).await;
        let done: bool = sqlx::query_scalar("SELECT orgkeeper.complete_action($1, $2, '{}')")
            .bind(id)
            .bind(token)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let read =
            table_counter(&mut tx, "pending_external_actions", OUTBOX_ROWS_READ).await - before;
        tx.commit().await.unwrap();
        assert!(done, "action {id} completed");
        assert!(
            read <= 1,
            "completing action {id} read {read} outbox rows (300 leased)"
        );
    }
}

/// Four migrated legacy users whose `secrets.reencrypt` actions replica
/// "a" claimed (the migration's other actions marked done first), the
/// last of which then expired and was taken over by replica "b". Each user
/// has a legacy LLM key, search key and custom secret.
async fn reencryptions_with_one_taken_over(db: &TestDb) -> (Vec<Action>, usize) {
    for i in 0..4 {
        let user = uuid::Uuid::new_v4();
        sqlx::query(
            "WITH s AS (
                 INSERT INTO orgkeeper.user_settings (user_id, email, llm_api_key, search_api_key)
                 VALUES ($1, $2, 'legacy-llm-' || $3, 'legacy-search-' || $3))
             INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value)
             VALUES ($1, 'GITHUB', 'legacy-github-' || $3)",
        )
        .bind(user)
        .bind(format!("reencrypt-{i}@example.com"))
        .bind(i.to_string())
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query("SELECT orgkeeper.migrate_user($1)")
            .bind(user)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET status = 'done', finished_at = now()
          WHERE kind <> 'secrets.reencrypt'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let a = Outbox::new(db.pool.clone(), "a".into(), LEASE);
    let mut claimed = a.claim(10).await.unwrap();
    claimed.sort_by_key(|c| c.id);
    assert_eq!(claimed.len(), 4);
    assert!(claimed.iter().all(|c| c.kind == "secrets.reencrypt"));
    let stale = 3;
    take_over(db, &a, &claimed[stale]).await;
    (claimed, stale)
}

/// Every item of an action's payload as a swap from the value stored now to
/// `new-<value>`.
async fn swaps_of(db: &TestDb, action: &Action) -> serde_json::Value {
    sqlx::query_scalar(
        "SELECT jsonb_agg(r.item || jsonb_build_object('old', r.value, 'new', 'new-' || r.value))
           FROM orgkeeper.read_secrets($1) r",
    )
    .bind(&action.payload["items"])
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Each user's secrets (LLM key on the membership, search key on the org,
/// custom secret) and how many `litellm.verify_key` actions they have.
async fn secrets_and_verifications(
    db: &TestDb,
    users: &[uuid::Uuid],
) -> Vec<(Option<String>, Option<String>, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT m.llm_api_key, o.search_api_key, c.secret_value,
                (SELECT count(*) FROM orgkeeper.pending_external_actions a
                  WHERE a.user_id = u.id AND a.kind = 'litellm.verify_key')
           FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, ord)
           JOIN orgkeeper.org o ON o.id = u.id
           JOIN orgkeeper.org_member m ON m.org_id = u.id AND m.user_id = u.id
           JOIN orgkeeper.custom_secrets c ON c.user_id = u.id
          ORDER BY u.ord",
    )
    .bind(users)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_of_reencryptions_swaps_every_live_migrated_users_values_at_once_or_nothing() {
    let db = TestDb::migrated().await;
    let (actions, stale) = reencryptions_with_one_taken_over(&db).await;
    let users: Vec<uuid::Uuid> = actions.iter().map(|a| a.user_id.unwrap()).collect();
    let mut swaps = Vec::new();
    for action in &actions {
        swaps.push(swaps_of(&db, action).await);
    }
    let before = secrets_and_verifications(&db, &users).await;
    assert!(before.iter().all(|(llm, search, secret, verify)| {
        [llm, search, secret]
            .iter()
            .all(|v| v.as_deref().is_some_and(|v| v.starts_with("legacy-")))
            && *verify == 0
    }));
    // The batch in reverse id order, with a stale task's row for action 0
    // (an earlier lease of this replica) at another position.
    let mut batch: Vec<usize> = (0..actions.len()).rev().collect();
    batch.insert(1, 0);
    let ids: Vec<i64> = batch.iter().map(|&i| actions[i].id).collect();
    let mut workers: Vec<String> = batch.iter().map(|&i| actions[i].lease.clone()).collect();
    workers[1] = "a/earlier".into();
    let results = vec![json!({ "reencrypted": 3 }); batch.len()];
    let write = |swaps: Vec<serde_json::Value>| {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT action_id, outcome FROM orgkeeper.record_reencrypted_many($1, $2, $3, $4)",
        )
        .bind(ids.clone())
        .bind(workers.clone())
        .bind(swaps)
        .bind(results.clone())
        .fetch_all(&db.pool)
    };

    // One value changed since it was read: nothing of the batch lands.
    let mut changed: Vec<serde_json::Value> = batch.iter().map(|&i| swaps[i].clone()).collect();
    changed[2][0]["old"] = "changed meanwhile".into();
    let err = write(changed).await.unwrap_err();
    let (code, message) = crate::support::db_error(&err);
    assert_eq!(code, "40001", "{message}");
    assert!(
        message.contains("changed while it was being re-encrypted"),
        "{message}"
    );
    assert_eq!(secrets_and_verifications(&db, &users).await, before);

    // User 1's migration was rolled back meanwhile: its values stay.
    let rolled_back = 1;
    sqlx::query(
        "UPDATE orgkeeper.user_migration SET status = 'rolled_back', rolled_back_at = now() WHERE user_id = $1",
    )
    .bind(users[rolled_back])
    .execute(&db.pool)
    .await
    .unwrap();
    let outcomes = write(batch.iter().map(|&i| swaps[i].clone()).collect())
        .await
        .unwrap();
    let expected: Vec<(i64, String)> = batch
        .iter()
        .enumerate()
        .map(|(pos, &i)| {
            let outcome = match i {
                _ if i == stale || pos == 1 => "lease_lost",
                _ if i == rolled_back => "skipped",
                _ => "done",
            };
            (actions[i].id, outcome.to_string())
        })
        .collect();
    assert_eq!(outcomes, expected);
    let after = secrets_and_verifications(&db, &users).await;
    for (i, (llm, search, secret, verify)) in after.into_iter().enumerate() {
        if i == stale || i == rolled_back {
            assert_eq!((llm, search, secret, verify), before[i].clone(), "user {i}");
        } else {
            let new = |v: &Option<String>| v.as_ref().map(|v| format!("new-{v}"));
            assert_eq!(
                (llm, search, secret, verify),
                (new(&before[i].0), new(&before[i].1), new(&before[i].2), 1),
                "user {i}"
            );
        }
    }
    let statuses: Vec<(String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT status, result -> 'skipped' FROM orgkeeper.pending_external_actions
          WHERE id = ANY ($1) ORDER BY id",
    )
    .bind(actions.iter().map(|a| a.id).collect::<Vec<_>>())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [
            ("done".to_string(), None),
            (
                "done".to_string(),
                Some(json!("the migration was rolled back"))
            ),
            ("done".to_string(), None),
            ("running".to_string(), None),
        ]
    );
}

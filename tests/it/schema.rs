//! Stories about the schema's invariants: ownership, names, personal
//! organizations, the outbox, the role catalog and `migrate` itself.

use crate::support::{assert_refusal, db_error, TestDb};
use sqlx::postgres::PgListener;
use sqlx::{Connection, Row};
use uuid::Uuid;

/// A users row (an organization's creator must exist).
async fn new_user(db: &TestDb) -> Uuid {
    sqlx::query_scalar("INSERT INTO orgkeeper.users (id) VALUES (gen_random_uuid()) RETURNING id")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Inserts an organization, and its owner's users row when there is none.
async fn insert_org(db: &TestDb, name: &str, owner: Uuid) -> Uuid {
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(owner)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query_scalar("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2) RETURNING id")
        .bind(name)
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .expect("insert org")
}

async fn add_member(db: &TestDb, org: Uuid, user: Uuid, role: &str) {
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $2, orgkeeper.role_id($3))")
        .bind(org)
        .bind(user)
        .bind(role)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn role_of(db: &TestDb, org: Uuid, user: Uuid) -> Option<String> {
    sqlx::query_scalar(
        "SELECT r.name FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
          WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org)
    .bind(user)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

/// Runs `statements` in one transaction and returns the error COMMIT (or a statement) raised.
async fn run_in_transaction(db: &TestDb, statements: &[String]) -> sqlx::Error {
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    for s in statements {
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(s.as_str()))
            .execute(&mut *tx)
            .await
        {
            return e;
        }
    }
    tx.commit()
        .await
        .expect_err("the transaction must be refused")
}

#[tokio::test]
async fn an_application_inserts_an_org_and_gets_an_owner_an_action_and_a_notification() {
    let db = TestDb::migrated().await;
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen("orgkeeper_actions").await.unwrap();

    // No daemon waits: inserts do not notify (busy daemons keep claiming).
    insert_org(&db, "Unnoticed", Uuid::new_v4()).await;
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
    assert!(quiet.is_err(), "no NOTIFY while no daemon waits");

    // A daemon waits (as after a claim that found nothing): the insert notifies.
    sqlx::query("SELECT orgkeeper.daemon_waits('listening-test', interval '1 minute')")
        .execute(&db.pool)
        .await
        .unwrap();
    let owner = Uuid::new_v4();
    let org = insert_org(&db, "Acme", owner).await;

    assert_eq!(role_of(&db, org, owner).await.as_deref(), Some("owner"));
    let (kind, status, user): (String, String, Uuid) = sqlx::query_as(
        "SELECT kind, status, user_id FROM orgkeeper.pending_external_actions WHERE org_id = $1",
    )
    .bind(org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), status.as_str(), user),
        ("litellm.provision_org", "pending", owner)
    );
    let action_id: i64 =
        sqlx::query_scalar("SELECT id FROM orgkeeper.pending_external_actions WHERE org_id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();

    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification within 5 s")
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(note.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({ "ids": [action_id] }),
        "ids only"
    );

    let current: Option<Uuid> =
        sqlx::query_scalar("SELECT current_org_id FROM orgkeeper.users WHERE id = $1")
            .bind(owner)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(current, Some(org), "a new user's first org becomes current");
}

#[tokio::test]
async fn deleting_the_owner_in_the_inserting_transaction_fails_the_commit_and_leaves_nothing() {
    let db = TestDb::migrated().await;
    let owner = Uuid::new_v4();
    let err = run_in_transaction(
        &db,
        &[
            format!("INSERT INTO orgkeeper.users (id) VALUES ('{owner}')"),
            format!("INSERT INTO orgkeeper.org (id, name, created_by) VALUES ('{owner}', 'Orphan Inc', '{owner}')"),
            format!("DELETE FROM orgkeeper.org_member WHERE user_id = '{owner}'"),
        ],
    )
    .await;
    let (code, message) = db_error(&err);
    assert_eq!(code, "23514");
    assert!(
        message.contains("\"Orphan Inc\"") && message.contains("without an active owner"),
        "{message}"
    );

    for table in ["org", "org_member", "pending_external_actions", "users"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM orgkeeper.{table}"
        )))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table} keeps nothing from the refused transaction");
    }
}

#[tokio::test]
async fn demoting_or_disabling_the_last_owner_is_refused_at_commit() {
    let db = TestDb::migrated().await;
    let owner = Uuid::new_v4();
    let org = insert_org(&db, "Solo", owner).await;

    for change in [
        format!("UPDATE orgkeeper.org_member SET role_id = orgkeeper.role_id('admin') WHERE org_id = '{org}'"),
        format!("UPDATE orgkeeper.org_member SET status = 'disabled' WHERE org_id = '{org}'"),
        format!("DELETE FROM orgkeeper.users WHERE id = '{owner}'"),
    ] {
        assert_refusal(&run_in_transaction(&db, std::slice::from_ref(&change)).await, "23514", &["\"Solo\""]);
    }
    assert_eq!(role_of(&db, org, owner).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn moving_the_owner_row_to_another_org_is_refused_at_commit() {
    let db = TestDb::migrated().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let first = insert_org(&db, "First", alice).await;
    let second = insert_org(&db, "Second", bob).await;

    let (code, message) = db_error(
        &run_in_transaction(
            &db,
            &[format!(
                "UPDATE orgkeeper.org_member SET org_id = '{second}' WHERE org_id = '{first}' AND user_id = '{alice}'"
            )],
        )
        .await,
    );
    assert_eq!(code, "23514");
    assert!(message.contains("\"First\""), "{message}");
    assert_eq!(role_of(&db, first, alice).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn demoting_one_of_two_owners_is_allowed() {
    let db = TestDb::migrated().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let org = insert_org(&db, "Duo", alice).await;
    add_member(&db, org, bob, "owner").await;

    sqlx::query("UPDATE orgkeeper.org_member SET role_id = orgkeeper.role_id('admin') WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(alice)
        .execute(&db.pool)
        .await
        .expect("one owner remains");
    assert_eq!(role_of(&db, org, alice).await.as_deref(), Some("admin"));
    assert_eq!(role_of(&db, org, bob).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn an_org_row_is_written_once_by_its_own_insert_and_again_by_every_later_membership_change() {
    // The membership bump (bump_membership_version) is the conflict that
    // serialises concurrent membership changes of one organization. The
    // row its own inserting (sub)transaction wrote needs no second write;
    // a membership change in any later statement or savepoint gets one.
    let db = TestDb::migrated().await;
    let (alice, bob, carol, dave) = (
        new_user(&db).await,
        new_user(&db).await,
        new_user(&db).await,
        new_user(&db).await,
    );
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    let version = |org: Uuid| {
        sqlx::query_scalar::<_, i64>("SELECT membership_version FROM orgkeeper.org WHERE id = $1")
            .bind(org)
    };
    let top: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Top', $1) RETURNING id",
    )
    .bind(alice)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    // Inside a savepoint, as migrate_users inserts its personal orgs.
    sqlx::query("SAVEPOINT inserting")
        .execute(&mut *tx)
        .await
        .unwrap();
    let nested: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Nested', $1) RETURNING id",
    )
    .bind(alice)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query("RELEASE SAVEPOINT inserting")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(version(top).fetch_one(&mut *tx).await.unwrap(), 0);
    assert_eq!(
        version(nested).fetch_one(&mut *tx).await.unwrap(),
        0,
        "written once inside a savepoint too"
    );
    // A member added in a later savepoint of the same transaction: the row
    // was written by another subtransaction, so it is bumped.
    sqlx::query("SAVEPOINT adding")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $2, orgkeeper.role_id('member'))")
        .bind(nested)
        .bind(bob)
        .execute(&mut *tx)
        .await
        .unwrap();
    // And again in the same savepoint: its own write of the row is the conflict.
    sqlx::query("INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $2, orgkeeper.role_id('member'))")
        .bind(nested)
        .bind(carol)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("RELEASE SAVEPOINT adding")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(version(nested).fetch_one(&mut *tx).await.unwrap(), 1);
    tx.commit().await.unwrap();
    // Later transactions: a removal inside a savepoint, an addition at the top.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SAVEPOINT removing")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $2")
        .bind(nested)
        .bind(bob)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("RELEASE SAVEPOINT removing")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    add_member(&db, nested, dave, "member").await;
    assert_eq!(version(nested).fetch_one(&db.pool).await.unwrap(), 3);
    assert_eq!(version(top).fetch_one(&db.pool).await.unwrap(), 0);
}

#[tokio::test]
async fn two_transactions_cannot_each_demote_the_other_owner() {
    let db = TestDb::migrated().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let org = insert_org(&db, "Race", alice).await;
    add_member(&db, org, bob, "owner").await;

    let demote = |user: Uuid| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("UPDATE orgkeeper.org_member SET role_id = orgkeeper.role_id('member') WHERE org_id = $1 AND user_id = $2")
                .bind(org)
                .bind(user)
                .execute(&mut *tx)
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tx.commit().await
        }
    };
    let (a, b) = tokio::join!(demote(alice), demote(bob));
    assert_eq!(
        a.is_ok() as u8 + b.is_ok() as u8,
        1,
        "exactly one demotion commits: {a:?} {b:?}"
    );
    let owners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1 AND role_id = orgkeeper.role_id('owner')",
    )
    .bind(org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owners, 1);
}

/// org.membership_version as `conn` sees it.
async fn membership_version(conn: &mut sqlx::PgConnection, org: Uuid) -> i64 {
    sqlx::query_scalar("SELECT membership_version FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_demotion_whose_bump_was_skipped_inside_a_savepoint_still_conflicts_at_every_isolation_level(
) {
    // Inside a savepoint, the first membership change writes the org row;
    // the demotion after it skips its own write (the same subtransaction
    // wrote both rows). That earlier write must still be what a concurrent
    // demotion of the other owner conflicts with: it waits, then fails
    // (40001, or the owner check at COMMIT under READ COMMITTED).
    let db = TestDb::migrated().await;
    for (level, sqlstate) in [
        ("READ COMMITTED", "23514"),
        ("REPEATABLE READ", "40001"),
        ("SERIALIZABLE", "40001"),
    ] {
        let (alice, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let org = insert_org(&db, &format!("Nested {level}"), alice).await;
        add_member(&db, org, bob, "owner").await;
        add_member(&db, org, carol, "member").await;
        let set_role = "UPDATE orgkeeper.org_member SET role_id = orgkeeper.role_id($3)
                         WHERE org_id = $1 AND user_id = $2 /* nested race */";
        let mut t1 = db.connect().await;
        let mut t2 = db.connect().await;
        for conn in [&mut t1, &mut t2] {
            crate::support::begin_with_snapshot(conn, level).await;
        }
        sqlx::query("SAVEPOINT changes")
            .execute(&mut t1)
            .await
            .unwrap();
        let before = membership_version(&mut t1, org).await;
        for (user, role) in [(carol, "admin"), (bob, "member")] {
            sqlx::query(set_role)
                .bind(org)
                .bind(user)
                .bind(role)
                .execute(&mut t1)
                .await
                .unwrap();
        }
        assert_eq!(
            membership_version(&mut t1, org).await,
            before + 1,
            "{level}: the demotion's bump was skipped"
        );
        let demote_alice = tokio::spawn(async move {
            let outcome = sqlx::query(set_role)
                .bind(org)
                .bind(alice)
                .bind("member")
                .execute(&mut t2)
                .await;
            let outcome = match outcome {
                Ok(_) => sqlx::query("COMMIT").execute(&mut t2).await,
                Err(e) => Err(e),
            };
            (t2, outcome)
        });
        crate::support::wait_for_lock_wait(
            &db.pool,
            std::time::Duration::from_secs(10),
            "the other demotion waits for the savepoint's org row",
            "nested race",
        )
        .await;
        sqlx::query("RELEASE SAVEPOINT changes")
            .execute(&mut t1)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
        let (mut t2, outcome) = demote_alice.await.unwrap();
        let (code, message) = db_error(&outcome.unwrap_err());
        assert_eq!(code, sqlstate, "{level}: {message}");
        sqlx::query("ROLLBACK").execute(&mut t2).await.unwrap();
        assert_eq!(
            role_of(&db, org, alice).await.as_deref(),
            Some("owner"),
            "{level}"
        );
        assert_eq!(
            role_of(&db, org, bob).await.as_deref(),
            Some("member"),
            "{level}"
        );
    }
}

#[tokio::test]
async fn the_role_catalog_cannot_be_edited() {
    let db = TestDb::migrated().await;
    for (statement, expected) in [
        (
            "DELETE FROM orgkeeper.role WHERE name = 'owner'",
            "cannot be deleted",
        ),
        (
            "UPDATE orgkeeper.role SET name = 'boss' WHERE name = 'owner'",
            "cannot be renamed",
        ),
        (
            "UPDATE orgkeeper.role SET rank = 1 WHERE name = 'member'",
            "re-ranked",
        ),
        (
            "UPDATE orgkeeper.role SET is_system = false WHERE name = 'admin'",
            "unprotected",
        ),
        (
            "INSERT INTO orgkeeper.role (name, rank, is_system) VALUES ('root', 500, true)",
            "system role",
        ),
        (
            "INSERT INTO orgkeeper.role (name, rank) VALUES ('emperor', 1)",
            "cannot outrank the owner",
        ),
    ] {
        let err = sqlx::query(statement)
            .execute(&db.pool)
            .await
            .expect_err(statement);
        let (code, message) = db_error(&err);
        assert!(code.starts_with("23"), "{statement}: {code}");
        assert!(message.contains(expected), "{statement}: {message}");
    }
    let roles: Vec<(String, i32)> =
        sqlx::query_as("SELECT name, rank FROM orgkeeper.role ORDER BY rank")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        roles,
        vec![
            ("owner".into(), 10),
            ("admin".into(), 20),
            ("member".into(), 1000)
        ]
    );
    sqlx::query("INSERT INTO orgkeeper.role (name, rank) VALUES ('viewer', 2000)")
        .execute(&db.pool)
        .await
        .expect("custom roles below the owner are allowed");
}

#[tokio::test]
async fn names_are_unique_case_insensitively_and_trimmed() {
    let db = TestDb::migrated().await;
    let org = insert_org(&db, "  Acme Labs  ", Uuid::new_v4()).await;
    let stored: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "Acme Labs");

    for clash in ["acme labs", "ACME LABS", " Acme Labs\t"] {
        let err = sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2)")
            .bind(clash)
            .bind(new_user(&db).await)
            .execute(&db.pool)
            .await
            .expect_err(clash);
        let (code, message) = db_error(&err);
        assert_eq!(code, "23505", "{clash}");
        assert_eq!(
            message,
            "an organization named \"Acme Labs\" already exists"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn empty_blank_and_overlong_names_are_refused() {
    let db = TestDb::migrated().await;
    let long = "x".repeat(300);
    for (name, expected) in [
        ("", "not empty"),
        ("   ", "not empty"),
        (long.as_str(), "300 characters long"),
    ] {
        let err = sqlx::query("SELECT orgkeeper.create_org($1, $2)")
            .bind(name)
            .bind(new_user(&db).await)
            .execute(&db.pool)
            .await
            .expect_err("refused");
        assert_refusal(&err, "23514", &[expected]);
    }
    let err = sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES (NULL, $1)")
        .bind(new_user(&db).await)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "23502", &[]);
}

#[tokio::test]
async fn personal_orgs_have_the_owners_id_and_there_is_one_per_user() {
    let db = TestDb::migrated().await;
    let user = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'ada@example.com')")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();

    let err = sqlx::query("INSERT INTO orgkeeper.org (id, name, kind, created_by) VALUES ($1, 'Mine', 'personal', $2)")
        .bind(Uuid::new_v4())
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(
        &err,
        "23514",
        &["personal organization \"Mine\" must have id = created_by"],
    );

    let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
        .bind(user)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(org, user);
    let row = sqlx::query("SELECT name, kind FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("name"), format!("user_{user}_org"));
    assert_eq!(row.get::<String, _>("kind"), "personal");
    assert_eq!(role_of(&db, org, user).await.as_deref(), Some("owner"));

    let err = sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "23505", &["already has a personal organization"]);
}

#[tokio::test]
async fn create_org_validates_its_arguments() {
    let db = TestDb::migrated().await;
    let err = sqlx::query("SELECT orgkeeper.create_org('Nobody''s', NULL)")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "22004", &[]);
    let err = sqlx::query("SELECT orgkeeper.create_org('Weird', $1, 'guild')")
        .bind(Uuid::new_v4())
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "22023", &["'guild'"]);

    let owner = new_user(&db).await;
    let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Team Rocket', $1)")
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(role_of(&db, org, owner).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn deleting_an_org_enqueues_the_team_deletion() {
    let db = TestDb::migrated().await;
    let org = insert_org(&db, "Doomed", Uuid::new_v4()).await;
    sqlx::query("UPDATE orgkeeper.org SET litellm_team_id = 'team-' || id::text WHERE id = $1")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();

    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'litellm.delete_team'",
    )
    .bind(org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(payload["team_id"], format!("team-{org}"));
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(members, 0);
}

#[tokio::test]
async fn the_outbox_state_machine_is_enforced_by_constraints() {
    let db = TestDb::migrated().await;
    let org = insert_org(&db, "Checked", Uuid::new_v4()).await;
    for (change, constraint) in [
        ("status = 'running'", "action_running_has_lease"),
        ("status = 'done'", "action_finished_iff_terminal"),
        ("locked_by = 'w1'", "action_lease_is_pair"),
        ("status = 'bogus'", "action_status_valid"),
        ("finished_at = now()", "action_finished_iff_terminal"),
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE orgkeeper.pending_external_actions SET {change} WHERE org_id = $1"
        )))
        .bind(org)
        .execute(&db.pool)
        .await
        .expect_err(change);
        let sqlx::Error::Database(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(e.constraint(), Some(constraint), "{change}");
    }
}

/// The names a CHECK constraint of the outbox table allows (`x IN (...)`,
/// which PostgreSQL keeps as `x = ANY (ARRAY[...])`).
async fn allowed_names(db: &TestDb, constraint: &str) -> Vec<String> {
    let definition: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = 'orgkeeper.pending_external_actions'::regclass AND conname = $1",
    )
    .bind(constraint)
    .fetch_one(&db.pool)
    .await
    .expect(constraint);
    definition
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_outbox_constraints_list_the_daemons_kinds_and_statuses() {
    use orgkeeper::outbox::{ActionKind, ActionStatus};
    let db = TestDb::migrated().await;
    assert_eq!(
        allowed_names(&db, "action_kind_known").await,
        ActionKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        allowed_names(&db, "action_status_valid").await,
        ActionStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
    );
    let terminal: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conname = 'action_finished_iff_terminal'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    for status in ActionStatus::ALL {
        assert_eq!(
            terminal.contains(&format!("'{status}'")),
            status.is_terminal(),
            "{status} in {terminal}"
        );
    }
}

#[tokio::test]
async fn an_action_of_an_unknown_kind_is_refused() {
    let db = TestDb::migrated().await;
    let org = insert_org(&db, "Unknown kind", Uuid::new_v4()).await;
    let err = sqlx::query(
        "INSERT INTO orgkeeper.pending_external_actions (kind, org_id) VALUES ('litellm.teleport', $1)",
    )
    .bind(org)
    .execute(&db.pool)
    .await
    .unwrap_err();
    let sqlx::Error::Database(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.constraint(), Some("action_kind_known"));
}

#[tokio::test]
async fn migrate_twice_and_concurrently_gives_the_same_schema() {
    let db = TestDb::empty().await;
    let first = orgkeeper::db::migrate(&db.url).await.unwrap();
    assert_eq!(first.applied, orgkeeper::db::migration_names());
    assert!(first.library_applied);
    let snapshot = schema_snapshot(&db).await;

    let again = orgkeeper::db::migrate(&db.url).await.unwrap();
    assert!(again.applied.is_empty() && !again.library_applied);
    assert_eq!(schema_snapshot(&db).await, snapshot);

    let fresh = TestDb::empty().await;
    let (a, b) = tokio::join!(
        orgkeeper::db::migrate(&fresh.url),
        orgkeeper::db::migrate(&fresh.url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.applied.len() + b.applied.len(),
        orgkeeper::db::migration_names().len(),
        "each migration applied once"
    );
    assert_eq!(schema_snapshot(&fresh).await, snapshot);
}

/// Tables, columns, constraints, indexes, triggers and functions of the schema.
async fn schema_snapshot(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '')
           FROM information_schema.columns WHERE table_schema = 'orgkeeper'
         UNION ALL
         SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
           FROM pg_constraint WHERE connamespace = 'orgkeeper'::regnamespace
         UNION ALL
         SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'orgkeeper'
         UNION ALL
         SELECT 'trigger ' || tgrelid::regclass || ' ' || pg_get_triggerdef(oid)
           FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'orgkeeper.%'
         UNION ALL
         SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
           FROM pg_proc p WHERE pronamespace = 'orgkeeper'::regnamespace
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn names_keep_their_letters_v_and_lose_surrounding_whitespace_including_vertical_tabs() {
    let db = TestDb::migrated().await;
    // PostgreSQL has no \v escape (E'\v' is the letter v): trimming must not
    // eat a leading or trailing "v".
    for name in ["vivid dev", "Prov", "v", "vv"] {
        let org = insert_org(&db, name, Uuid::new_v4()).await;
        let stored: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(stored, name);
    }
    let org = insert_org(&db, "\t\u{0B} Padded \u{0B}\r\n\u{0C}", Uuid::new_v4()).await;
    let stored: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "Padded");
    sqlx::query("UPDATE orgkeeper.org SET name = $2 WHERE id = $1")
        .bind(org)
        .bind("\u{0B}velvet v\u{0B}\t")
        .execute(&db.pool)
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "velvet v");
    let err = sqlx::query("SELECT orgkeeper.create_org($1, $2)")
        .bind("\u{0B}\t\u{0B}")
        .bind(new_user(&db).await)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "23514", "a name of whitespace only");

    // The CHECK constraint (which backs the trigger) uses the same set:
    // with triggers off, an untrimmed name is refused and a "v" is kept.
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orgkeeper.org (id, name, created_by, org_version) VALUES (gen_random_uuid(), 'vivid vendor v', gen_random_uuid(), 1)",
    )
    .execute(&mut *tx)
    .await
    .expect("the CHECK accepts names starting and ending with v");
    let err =
        sqlx::query("INSERT INTO orgkeeper.org (id, name, created_by, org_version) VALUES (gen_random_uuid(), $1, gen_random_uuid(), 1)")
            .bind("\u{0B}untrimmed")
            .execute(&mut *tx)
            .await
            .unwrap_err();
    assert_refusal(&err, "23514", &["org_name_trimmed_nonempty"]);
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn custom_roles_cannot_be_raised_to_the_owners_rank_or_made_system_by_an_update() {
    let db = TestDb::migrated().await;
    sqlx::query("INSERT INTO orgkeeper.role (name, rank) VALUES ('viewer', 2000)")
        .execute(&db.pool)
        .await
        .unwrap();
    for (statement, expected) in [
        (
            "UPDATE orgkeeper.role SET rank = 1, is_system = true WHERE name = 'viewer'",
            "cannot be made a system role",
        ),
        (
            "UPDATE orgkeeper.role SET is_system = true WHERE name = 'viewer'",
            "cannot be made a system role",
        ),
        (
            "UPDATE orgkeeper.role SET rank = 1 WHERE name = 'viewer'",
            "cannot outrank the owner",
        ),
        (
            "UPDATE orgkeeper.role SET rank = 10 WHERE name = 'viewer'",
            "cannot outrank the owner",
        ),
    ] {
        let err = sqlx::query(statement)
            .execute(&db.pool)
            .await
            .expect_err(statement);
        let (code, message) = db_error(&err);
        assert!(code.starts_with("23"), "{statement}: {code}");
        assert!(message.contains(expected), "{statement}: {message}");
    }
    let viewer: (i32, bool) =
        sqlx::query_as("SELECT rank, is_system FROM orgkeeper.role WHERE name = 'viewer'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(viewer, (2000, false));

    // Below the owner, custom roles may be renamed, re-ranked and deleted.
    sqlx::query("UPDATE orgkeeper.role SET name = 'reviewer', rank = 11 WHERE name = 'viewer'")
        .execute(&db.pool)
        .await
        .expect("a custom role may move anywhere below the owner");
    sqlx::query("DELETE FROM orgkeeper.role WHERE name = 'reviewer'")
        .execute(&db.pool)
        .await
        .expect("a custom role may be deleted");
}

#[tokio::test]
async fn provisioning_write_backs_lock_the_actions_org_through_one_helper() {
    let db = TestDb::migrated().await;
    let org = insert_org(&db, "Locked Ltd", Uuid::new_v4()).await;
    let action: i64 = sqlx::query_scalar(
        "SELECT id FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'litellm.provision_org'",
    )
    .bind(org)
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let mut a = db.connect().await;
    let mut tx = a.begin().await.unwrap();
    let locked: Option<Uuid> = sqlx::query_scalar("SELECT orgkeeper.lock_action_org($1)")
        .bind(action)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(locked, Some(org));
    // The org row is locked FOR NO KEY UPDATE: writers wait, foreign-key
    // checks (KEY SHARE) do not; the action row is not locked yet.
    let mut b = db.connect().await;
    let err = sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
        .bind(org)
        .execute(&mut b)
        .await
        .unwrap_err();
    assert_refusal(&err, "55P03", &[]);
    sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR KEY SHARE NOWAIT")
        .bind(org)
        .execute(&mut b)
        .await
        .expect("key share is not blocked");
    sqlx::query("SELECT 1 FROM orgkeeper.pending_external_actions WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(action)
        .execute(&mut b)
        .await
        .expect("the action row is locked after the org row, by the caller");
    tx.rollback().await.unwrap();

    let unknown: Option<Uuid> = sqlx::query_scalar("SELECT orgkeeper.lock_action_org(-1)")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(unknown, None);

    // The one-action write-backs take their first lock through it.
    let users: Vec<(String, bool)> = sqlx::query_as(
        "SELECT p.proname::text, p.prosrc LIKE '%orgkeeper.lock_action_org(p_action_id)%'
           FROM pg_proc p
          WHERE p.pronamespace = 'orgkeeper'::regnamespace
            AND p.proname IN ('record_billing_customer', 'record_provisioning_failed')
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        users,
        vec![
            ("record_billing_customer".to_string(), true),
            ("record_provisioning_failed".to_string(), true),
        ]
    );
}

/// A batch of two running actions whose organizations' key order differs
/// from the batch's and the action ids' order, written back by `statement`
/// ($1 the action ids in batch order; the worker tokens are `w/1` and
/// `w/2`, so only the first action's lease holds) while another
/// session holds the key-first organization's row. Checks that the
/// write-back, while it waits, has locked nothing else: neither the other
/// org's row (it locks in key order, so two batches cannot deadlock) nor any
/// action row (org rows first, as lock_action_org orders it for one).
/// Returns the organizations (key-first, other) and each action's outcome as
/// text, in batch order.
async fn write_back_of_a_batch_locking_orgs_in_key_order(
    statement: &'static str,
    function: &str,
) -> (Vec<(String, Option<String>)>, Vec<(i64, String)>) {
    let db = TestDb::migrated().await;
    // Org "First" sorts first by key but comes second in the batch, and its
    // action has the higher id.
    let mut actions = Vec::new();
    for (id, name) in [
        ("00000000-0000-4000-8000-00000000000b", "Batch Second"),
        ("00000000-0000-4000-8000-00000000000a", "Batch First"),
    ] {
        let owner = Uuid::new_v4();
        sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1)")
            .bind(owner)
            .execute(&db.pool)
            .await
            .unwrap();
        // The test's superuser may choose an org id (the trusted path).
        let org: Uuid = sqlx::query_scalar(
            "INSERT INTO orgkeeper.org (id, name, created_by) VALUES ($1::uuid, $2, $3) RETURNING id",
        )
        .bind(id)
        .bind(name)
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let action: i64 = sqlx::query_scalar(
            "UPDATE orgkeeper.pending_external_actions
                SET status = 'running', locked_by = 'w/1', locked_until = now() + interval '1 minute'
              WHERE org_id = $1 AND kind = 'litellm.provision_org' RETURNING id",
        )
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        actions.push((org, action));
    }
    let (second, first) = (actions[0], actions[1]);
    assert!(first.0 < second.0 && first.1 > second.1);
    let mut holder = db.connect().await;
    let mut held = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR NO KEY UPDATE")
        .bind(first.0)
        .execute(&mut *held)
        .await
        .unwrap();
    let writer = {
        let pool = db.pool.clone();
        let ids = vec![second.1, first.1];
        tokio::spawn(async move {
            sqlx::query_as::<_, (i64, String)>(statement)
                .bind(ids)
                .fetch_all(&pool)
                .await
                .unwrap()
        })
    };
    crate::support::wait_for_lock_wait(
        &db.pool,
        std::time::Duration::from_secs(10),
        "the write-back waits",
        function,
    )
    .await;
    sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
        .bind(second.0)
        .execute(&mut *held)
        .await
        .expect("the org later in key order is not locked while the first is awaited");
    for (_, action) in &actions {
        sqlx::query(
            "SELECT 1 FROM orgkeeper.pending_external_actions WHERE id = $1 FOR UPDATE NOWAIT",
        )
        .bind(action)
        .execute(&mut *held)
        .await
        .expect("no action row is locked while an org row is awaited");
    }
    held.rollback().await.unwrap();
    let outcomes = writer.await.unwrap();
    let orgs = sqlx::query_as(
        "SELECT provisioning_status, litellm_team_id FROM orgkeeper.org WHERE id = ANY ($1) ORDER BY id",
    )
    .bind(vec![first.0, second.0])
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        outcomes.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![second.1, first.1]
    );
    (orgs, outcomes)
}

/// The owners of the actions $1 (in that order): an SQL array expression.
macro_rules! owners_of_batch {
    () => {
        "ARRAY(SELECT o.created_by
                 FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, n)
                 JOIN orgkeeper.pending_external_actions a ON a.id = u.id
                 JOIN orgkeeper.org o ON o.id = a.org_id
                ORDER BY u.n)"
    };
}

#[tokio::test]
async fn the_batched_write_backs_lock_every_org_of_the_batch_in_key_order_before_any_action() {
    // The first row's fence held, the second's token was stale; outcomes
    // come in the batch's order.
    let only_second_written = vec![
        ("pending".to_string(), None),
        ("active".to_string(), Some("team-second".to_string())),
    ];
    let (orgs, outcomes) = write_back_of_a_batch_locking_orgs_in_key_order(
        "SELECT action_id, recorded::text FROM orgkeeper.record_teams_ready(
            $1, ARRAY['w/1', 'w/2'], ARRAY['team-second', 'team-first'], ARRAY['{}', '{}']::jsonb[])",
        "record_teams_ready",
    )
    .await;
    assert_eq!(orgs, only_second_written);
    assert_eq!(
        outcomes.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(),
        ["true", "false"]
    );
    let (orgs, outcomes) = write_back_of_a_batch_locking_orgs_in_key_order(
        concat!(
            "SELECT action_id, outcome FROM orgkeeper.record_orgs_provisioned(
                $1, ARRAY['w/1', 'w/2'], ARRAY['team-second', 'team-first'], ",
            owners_of_batch!(),
            ", ARRAY['m', 'm'], ARRAY['https://llm', 'https://llm'], ARRAY['ok1:a', 'ok1:b'],
                ARRAY['{}', '{}']::jsonb[])"
        ),
        "record_orgs_provisioned",
    )
    .await;
    assert_eq!(orgs, only_second_written);
    assert_eq!(
        outcomes.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(),
        ["done", "lease_lost"]
    );
    // The members' keys: the organizations themselves are left as they were.
    let (orgs, outcomes) = write_back_of_a_batch_locking_orgs_in_key_order(
        concat!(
            "SELECT action_id, outcome FROM orgkeeper.record_member_keys($1, ARRAY['w/1', 'w/2'], ",
            owners_of_batch!(),
            ", ARRAY['ok1:a', 'ok1:b'], ARRAY['{}', '{}']::jsonb[])"
        ),
        "record_member_keys",
    )
    .await;
    assert_eq!(orgs, vec![("pending".to_string(), None); 2]);
    assert_eq!(
        outcomes.iter().map(|o| o.1.as_str()).collect::<Vec<_>>(),
        ["done", "lease_lost"]
    );
}

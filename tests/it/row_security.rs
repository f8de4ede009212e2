//! Stories about tenant isolation: the application role, confined by
//! row-level security to the organizations of the user it names in
//! `orgkeeper.user_id`, cannot see, change or create another organization's
//! rows through any table — not even by guessing ids — while the triggers
//! and management functions keep working for it; the daemon and DBA roles
//! are not confined; every table has row-level security or a recorded reason.

use crate::support::{app, app_at, assert_refusal, db_error, LoginRole, TestDb};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// The related tables (org-scoped rows) with the columns a row needs besides
/// `user_id` and `org_id`.
const RELATED: &[(&str, &str, &str)] = &[
    (
        "stripe_customers",
        "stripe_customer_id",
        "'cus_' || md5(random()::text)",
    ),
    ("slack_users", "slack_user_id", "'U1'"),
    ("slack_conversation", "channel_id", "'C1'"),
    ("api_keys", "name", "'key'"),
    ("custom_secrets", "secret_name", "'secret'"),
    ("billing_sessions", "status", "'completed'"),
    ("user_repos", "repo_id", "'repo'"),
    ("gitlab_webhook", "group_id", "'group'"),
    (
        "conversation_metadata_saas",
        "conversation_id",
        "gen_random_uuid()::text",
    ),
];

fn related_insert(table: &str, column: &str, value: &str) -> String {
    format!("INSERT INTO orgkeeper.{table} (user_id, org_id, {column}) VALUES ($1, $2, {value})")
}

/// Two tenants: Alice owns "Alpha", Bob owns "Bravo"; each org has a row in
/// every related table, an invitation, outbox actions, legacy rows.
struct Tenants {
    alice: Uuid,
    bob: Uuid,
    alpha: Uuid,
    bravo: Uuid,
}

async fn tenants(db: &TestDb) -> Tenants {
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'alice@alpha.test'), ($2, 'bob@bravo.test')")
        .bind(alice)
        .bind(bob)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut orgs = Vec::new();
    for (name, owner) in [("Alpha", alice), ("Bravo", bob)] {
        let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org($1, $2)")
            .bind(name)
            .bind(owner)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        for (table, column, value) in RELATED {
            sqlx::query(sqlx::AssertSqlSafe(related_insert(table, column, value)))
                .bind(owner)
                .bind(org)
                .execute(&db.pool)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
        }
        sqlx::query("SELECT orgkeeper.create_invitation($1, $2, $3, 'member')")
            .bind(owner)
            .bind(org)
            .bind(format!("guest@{}.test", name.to_lowercase()))
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, 'legacy')")
            .bind(owner)
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO orgkeeper.conversation_metadata (conversation_id, user_id, title) VALUES ($1, $2, 't')")
            .bind(format!("legacy-{owner}"))
            .bind(owner)
            .execute(&db.pool)
            .await
            .unwrap();
        orgs.push(org);
    }
    // Legacy rows not yet migrated: org_id NULL, visible to no application user.
    sqlx::query(
        "INSERT INTO orgkeeper.api_keys (user_id, org_id, name) VALUES ($1, NULL, 'legacy')",
    )
    .bind(alice)
    .execute(&db.pool)
    .await
    .unwrap();
    Tenants {
        alice,
        bob,
        alpha: orgs[0],
        bravo: orgs[1],
    }
}

/// Every table of schema orgkeeper with the column naming its organization.
async fn org_scoped_tables(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT c.relname::text, CASE WHEN c.relname = 'org' THEN 'id' ELSE 'org_id' END
           FROM pg_class c
          WHERE c.relnamespace = 'orgkeeper'::regnamespace AND c.relkind IN ('r', 'p')
            AND (c.relname = 'org' OR EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped))
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Every row of Bravo's, in every org-scoped table, as the superuser sees it.
async fn bravo_rows(db: &TestDb, tables: &[(String, String)], bravo: Uuid) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, column) in tables {
        let mut these: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT '{table}: ' || t::text FROM orgkeeper.{table} t WHERE {column} = $1 ORDER BY 1"
        )))
        .bind(bravo)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        rows.append(&mut these);
    }
    rows
}

/// Rows affected, or the refusal's SQLSTATE.
async fn affected(conn: &mut PgConnection, sql: &str, id: Uuid) -> Result<u64, String> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| db_error(&e).0)
}

// ---------------------------------------------------------------------------
// the register
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_table_has_row_security_or_a_recorded_exemption() {
    let db = TestDb::migrated().await;
    let unprotected: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
          WHERE c.relnamespace = 'orgkeeper'::regnamespace AND c.relkind IN ('r', 'p')
            AND NOT c.relrowsecurity
            AND c.relname NOT IN (SELECT table_name FROM orgkeeper.rls_exempt)
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        unprotected.is_empty(),
        "tables without row-level security and without a reason in orgkeeper.rls_exempt: {unprotected:?}"
    );

    let exempt: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT e.table_name, e.reason, to_regclass('orgkeeper.' || quote_ident(e.table_name)) IS NOT NULL,
                coalesce(has_table_privilege('orgkeeper_app', to_regclass('orgkeeper.' || quote_ident(e.table_name)),
                                             'INSERT, UPDATE, DELETE, TRUNCATE'), false)
           FROM orgkeeper.rls_exempt e ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let names: Vec<&str> = exempt.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "daemon_waiting",
            "rls_exempt",
            "role",
            "schema_history",
            "settings_version",
            "sql_library"
        ]
    );
    for (table, reason, exists, app_writes) in &exempt {
        assert!(exists, "exempt table {table} does not exist");
        assert!(reason.contains("no tenant data"), "{table}: {reason}");
        assert!(
            !app_writes,
            "the application may write exempt table {table}"
        );
    }

    // Every table with row security has a policy for the application or for
    // nobody but the service roles — never a policy for PUBLIC.
    let public_policies: Vec<String> = sqlx::query_scalar(
        "SELECT tablename || '.' || policyname FROM pg_policies
          WHERE schemaname = 'orgkeeper' AND 'public' = ANY (roles)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(public_policies.is_empty(), "{public_policies:?}");
}

// ---------------------------------------------------------------------------
// isolation
// ---------------------------------------------------------------------------

/// The isolation stories run under every isolation level an application
/// may choose: row security must not depend on it.
#[tokio::test]
async fn the_rls_suite_holds_under_read_committed_repeatable_read_and_serializable() {
    for level in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] {
        eprintln!("isolation level: {level}");
        a_user_sees_only_their_organizations_rows_through_every_table(level).await;
        guessed_ids_update_and_delete_nothing_in_another_organization(level).await;
        rows_cannot_be_written_into_another_organization(level).await;
        the_application_creates_and_manages_organizations_under_row_security(level).await;
        without_a_user_the_application_sees_nothing(level).await;
    }
}

async fn a_user_sees_only_their_organizations_rows_through_every_table(level: &str) {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let tables = org_scoped_tables(&db).await;
    assert!(tables.len() >= 12, "{tables:?}");
    let mut conn = app_at(&db, Some(t.alice), level).await;

    for (table, column) in &tables {
        let sql = format!("SELECT count(*) FROM orgkeeper.{table} WHERE {column} = $1");
        match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(t.bravo)
            .fetch_one(&mut conn)
            .await
        {
            Ok(n) => {
                assert_eq!(n, 0, "{table}: Alice sees Bravo's rows");
                // Whatever Alice sees belongs to Alpha.
                let foreign: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM orgkeeper.{table} WHERE {column} IS DISTINCT FROM $1"
                )))
                .bind(t.alpha)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                assert_eq!(foreign, 0, "{table}: Alice sees rows of no org of hers");
            }
            Err(e) => assert_eq!(db_error(&e).0, "42501", "{table}: {e}"),
        }
    }

    // The control: she does see her own organization's rows.
    for table in ["org_member", "invitation"]
        .into_iter()
        .chain(RELATED.iter().map(|r| r.0))
    {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM orgkeeper.{table} WHERE org_id = $1"
        )))
        .bind(t.alpha)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(n >= 1, "{table}: Alice must see Alpha's rows");
    }
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM orgkeeper.org")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(names, ["Alpha"]);
    let users: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orgkeeper.users")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(users, [t.alice], "Bob is nobody Alice shares an org with");

    // Tables the application never reads.
    for table in [
        "pending_external_actions",
        "user_settings",
        "conversation_metadata",
        "org_creation_policy",
        "deployment_setting",
        "sql_library",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM orgkeeper.{table}"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{table}");
    }
    // Token hashes stay hidden even from the organization's owner.
    let err = sqlx::query("SELECT token_hash FROM orgkeeper.invitation")
        .fetch_all(&mut conn)
        .await
        .unwrap_err();
    assert_refusal(&err, "42501", &[]);
}

async fn guessed_ids_update_and_delete_nothing_in_another_organization(level: &str) {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let tables = org_scoped_tables(&db).await;
    let before = bravo_rows(&db, &tables, t.bravo).await;
    assert!(before.len() >= 12);
    let mut conn = app_at(&db, Some(t.alice), level).await;

    for (table, column) in &tables {
        for sql in [
            format!("UPDATE orgkeeper.{table} SET {column} = {column} WHERE {column} = $1"),
            format!("DELETE FROM orgkeeper.{table} WHERE {column} = $1"),
        ] {
            match affected(&mut conn, &sql, t.bravo).await {
                Ok(n) => assert_eq!(n, 0, "{sql}"),
                Err(code) => assert_eq!(code, "42501", "{sql}"),
            }
        }
    }
    // Setting a column the application may write, on Bravo's rows by id.
    assert_eq!(
        affected(
            &mut conn,
            "UPDATE orgkeeper.org SET name = 'Pwned' WHERE id = $1",
            t.bravo
        )
        .await,
        Ok(0)
    );
    assert_eq!(
        affected(
            &mut conn,
            "UPDATE orgkeeper.users SET email = 'alice@alpha.test' WHERE id = $1",
            t.bob
        )
        .await,
        Ok(0)
    );
    // Bravo's primary keys, as if guessed.
    for (table, _, _) in RELATED {
        let key = if *table == "conversation_metadata_saas" {
            "conversation_id"
        } else {
            "id"
        };
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {key}::text FROM orgkeeper.{table} WHERE org_id = $1"
        )))
        .bind(t.bravo)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(!ids.is_empty());
        for id in ids {
            for sql in [
                format!("UPDATE orgkeeper.{table} SET user_id = $1 WHERE {key}::text = '{id}'"),
                format!(
                    "DELETE FROM orgkeeper.{table} WHERE {key}::text = '{id}' AND $1 IS NOT NULL"
                ),
            ] {
                match affected(&mut conn, &sql, t.alice).await {
                    Ok(n) => assert_eq!(n, 0, "{sql}"),
                    Err(code) => assert_eq!(code, "42501", "{sql}"),
                }
            }
        }
    }
    assert_eq!(
        bravo_rows(&db, &tables, t.bravo).await,
        before,
        "Bravo's rows are untouched"
    );
}

async fn rows_cannot_be_written_into_another_organization(level: &str) {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let tables = org_scoped_tables(&db).await;
    let before = bravo_rows(&db, &tables, t.bravo).await;
    let mut conn = app_at(&db, Some(t.alice), level).await;

    for (table, column, value) in RELATED {
        let err = sqlx::query(sqlx::AssertSqlSafe(related_insert(table, column, value)))
            .bind(t.alice)
            .bind(t.bravo)
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(
            db_error(&err).0,
            "42501",
            "INSERT into {table} with Bravo's org_id: {err}"
        );
        // Moving one of Alpha's rows into Bravo is refused too.
        let err = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE orgkeeper.{table} SET org_id = $1 WHERE org_id = $2"
        )))
        .bind(t.bravo)
        .bind(t.alpha)
        .execute(&mut conn)
        .await
        .unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "moving a {table} row: {err}");
    }
    for (sql, what) in [
        (
            "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Bob Two', $1)",
            "an org owned by Bob",
        ),
        (
            "INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'x@y.test')",
            "Bob's user row",
        ),
        (
            "INSERT INTO orgkeeper.org_member (org_id, user_id, role_id) VALUES ($1, $1, 1)",
            "a membership",
        ),
        (
            "INSERT INTO orgkeeper.invitation (org_id, email, role_id, token_hash, invited_by, expires_at)
             VALUES ($1, 'x@y.test', 1, '\\x00', $1, now())",
            "an invitation",
        ),
        (
            "INSERT INTO orgkeeper.pending_external_actions (kind, org_id) VALUES ('litellm.delete_team', $1)",
            "an outbox action",
        ),
        ("UPDATE orgkeeper.users SET current_org_id = $1", "switching to Bravo"),
    ] {
        let id = if what.contains("Bob") { t.bob } else { t.bravo };
        let err = sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{what}: {err}");
    }
    // Management functions answer for Bravo as for any org Alice is not in.
    let err = sqlx::query("SELECT orgkeeper.add_member($1, $2, $1, 'owner')")
        .bind(t.alice)
        .bind(t.bravo)
        .execute(&mut conn)
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        !message.contains("Bravo"),
        "a non-member does not learn the name: {message}"
    );
    assert_eq!(bravo_rows(&db, &tables, t.bravo).await, before);
}

// ---------------------------------------------------------------------------
// what the application can do
// ---------------------------------------------------------------------------

async fn the_application_creates_and_manages_organizations_under_row_security(level: &str) {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let mut conn = app_at(&db, Some(t.alice), level).await;

    // A direct INSERT: the triggers (owner row, user row, outbox) work for it.
    let mut tx = conn.begin().await.unwrap();
    let org: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Alpha Two', $1) RETURNING id",
    )
    .bind(t.alice)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let err = sqlx::query_scalar::<_, Uuid>(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES (' alpha ', $1) RETURNING id",
    )
    .bind(t.alice)
    .fetch_one(&mut *tx)
    .await
    .unwrap_err();
    assert_refusal(&err, "23505", &["\"Alpha\" already exists"]);
    tx.rollback().await.unwrap();

    let org2: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Alpha Two', $1) RETURNING id",
    )
    .bind(t.alice)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_ne!(org, org2, "the first attempt rolled back");
    let (role, action): (String, String) = sqlx::query_as(
        "SELECT r.name, (SELECT kind FROM orgkeeper.pending_external_actions WHERE org_id = m.org_id)
           FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
          WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org2)
    .bind(t.alice)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (role.as_str(), action.as_str()),
        ("owner", "litellm.provision_org")
    );

    // The functions, called as herself.
    let carol = Uuid::new_v4();
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'admin')")
        .bind(t.alice)
        .bind(org2)
        .bind(carol)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.rename_org($1, $2, 'Alpha Prime')")
        .bind(t.alice)
        .bind(org2)
        .execute(&mut conn)
        .await
        .unwrap();
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1")
            .bind(org2)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(members, 2, "she sees the new membership");
    sqlx::query("UPDATE orgkeeper.org SET agent = 'CodeActAgent' WHERE id = $1")
        .bind(org2)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE orgkeeper.users SET current_org_id = $1 WHERE id = $2")
        .bind(org2)
        .bind(t.alice)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.api_keys (user_id, org_id, name) VALUES ($1, $2, 'new')")
        .bind(t.alice)
        .bind(org2)
        .execute(&mut conn)
        .await
        .unwrap();
    // Columns the daemon owns are not hers to write, nor are memberships.
    for sql in [
        "UPDATE orgkeeper.org SET provisioning_status = 'active' WHERE id = $1",
        "UPDATE orgkeeper.org SET llm_api_key = 'x' WHERE id = $1",
        "DELETE FROM orgkeeper.org WHERE id = $1",
        "UPDATE orgkeeper.org_member SET role_id = 1 WHERE org_id = $1",
        "DELETE FROM orgkeeper.org_member WHERE org_id = $1",
        "SELECT * FROM orgkeeper.claim_actions('w', 10, interval '1 minute') WHERE $1 IS NOT NULL",
    ] {
        let err = sqlx::query(sql)
            .bind(org2)
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{sql}");
    }
    // Carol has no other organization: she goes first, then the org.
    sqlx::query("SELECT orgkeeper.remove_member($1, $2, $3)")
        .bind(t.alice)
        .bind(org2)
        .bind(carol)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(t.alice)
        .bind(org2)
        .execute(&mut conn)
        .await
        .unwrap();
}

async fn without_a_user_the_application_sees_nothing(level: &str) {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let mut conn = app_at(&db, None, level).await;
    for table in ["org", "org_member", "users", "invitation", "api_keys"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM orgkeeper.{table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let err = sqlx::query("SELECT orgkeeper.rename_org($1, $2, 'X')")
        .bind(t.alice)
        .bind(t.alpha)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_refusal(&err, "42501", &[]);

    sqlx::query("SET orgkeeper.user_id = 'alice'")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = sqlx::query("SELECT count(*) FROM orgkeeper.org")
        .fetch_one(&mut conn)
        .await
        .unwrap_err();
    assert_refusal(
        &err,
        "22023",
        &["orgkeeper.user_id is set to 'alice', which is not a UUID"],
    );
}

/// orgkeeper.user_id is read without an EXCEPTION block (no subtransaction
/// per call): the text is checked before the cast. Every form PostgreSQL
/// reads as a uuid is the same user; anything else is refused, naming it.
#[tokio::test]
async fn orgkeeper_user_id_takes_every_spelling_of_a_uuid_and_refuses_the_rest() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    for spelling in [
        id,
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        "  a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
    ] {
        sqlx::query("SELECT set_config('orgkeeper.user_id', $1, false)")
            .bind(spelling)
            .execute(&mut conn)
            .await
            .unwrap();
        let user: Option<Uuid> = sqlx::query_scalar("SELECT orgkeeper.current_app_user()")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{spelling:?}: {e}"));
        assert_eq!(user, Some(Uuid::parse_str(id).unwrap()), "{spelling:?}");
    }
    for not_a_uuid in [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc9-99c0b-4ef8-bb6d-6bb9bd380a11",
        "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "alice",
    ] {
        let cast = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT '{not_a_uuid}'::uuid")))
            .execute(&mut conn)
            .await;
        assert!(cast.is_err(), "PostgreSQL reads {not_a_uuid:?} as a uuid");
        sqlx::query("SELECT set_config('orgkeeper.user_id', $1, false)")
            .bind(not_a_uuid)
            .execute(&mut conn)
            .await
            .unwrap();
        let err = sqlx::query("SELECT orgkeeper.current_app_user()")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert_refusal(
            &err,
            "22023",
            &[&format!(
                "orgkeeper.user_id is set to '{not_a_uuid}', which is not a UUID"
            )],
        );
    }
    sqlx::query("SELECT set_config('orgkeeper.user_id', ' ', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    let unset: Option<Uuid> = sqlx::query_scalar("SELECT orgkeeper.current_app_user()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(unset, None);
}

// ---------------------------------------------------------------------------
// the roles
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_roles_exist_with_least_privilege_and_only_service_roles_bypass_rls() {
    let db = TestDb::migrated().await;
    let roles: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolcanlogin, rolbypassrls, rolsuper FROM pg_roles
          WHERE rolname IN ('orgkeeper_app', 'orgkeeper_daemon', 'orgkeeper_dba') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        roles,
        vec![
            ("orgkeeper_app".into(), false, false, false),
            ("orgkeeper_daemon".into(), false, true, false),
            ("orgkeeper_dba".into(), false, true, false),
        ]
    );

    // Nothing in the schema is executable by PUBLIC.
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'orgkeeper'::regnamespace
            AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0))
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(public.is_empty(), "executable by PUBLIC: {public:?}");

    // Every SECURITY DEFINER function pins its search_path.
    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'orgkeeper'::regnamespace AND p.prosecdef
            AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=pg_catalog%')
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        unpinned.is_empty(),
        "SECURITY DEFINER without a pinned search_path: {unpinned:?}"
    );

    // The application may call the management surface but not the daemon's.
    let (app_manages, app_claims, daemon_claims, daemon_manages): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT has_function_privilege('orgkeeper_app', 'orgkeeper.add_member(uuid, uuid, uuid, text)', 'EXECUTE'),
                has_function_privilege('orgkeeper_app', 'orgkeeper.claim_actions(text, integer, interval)', 'EXECUTE'),
                has_function_privilege('orgkeeper_daemon', 'orgkeeper.claim_actions(text, integer, interval)', 'EXECUTE'),
                has_function_privilege('orgkeeper_daemon', 'orgkeeper.delete_org(uuid, uuid)', 'EXECUTE')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (app_manages, app_claims, daemon_claims, daemon_manages),
        (true, false, true, false)
    );
}

#[tokio::test]
async fn login_roles_that_are_members_of_the_service_roles_see_every_organization() {
    let db = TestDb::migrated().await;
    tenants(&db).await;
    // Role attributes such as BYPASSRLS are not inherited: a login role that is
    // merely a member relies on the service policies.
    let login = format!("ok_daemon_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {login} LOGIN IN ROLE orgkeeper_daemon"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.connect().await;
    let outcome: Result<(i64, i64, i64), sqlx::Error> = async {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {login}")))
            .execute(&mut conn)
            .await?;
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM orgkeeper.org),
                    (SELECT count(*) FROM orgkeeper.api_keys),
                    (SELECT count(*) FROM orgkeeper.pending_external_actions)",
        )
        .fetch_one(&mut conn)
        .await
    }
    .await;
    sqlx::query("RESET ROLE").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {login}")))
        .execute(&db.pool)
        .await
        .unwrap();
    let (orgs, keys, actions) = outcome.unwrap();
    assert_eq!((orgs, keys), (2, 3), "both orgs' rows and the legacy row");
    assert!(actions >= 2);
}

#[tokio::test]
async fn a_dba_acts_for_any_user_without_naming_one_but_by_the_same_rules() {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let login = format!("ok_dba_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {login} LOGIN IN ROLE orgkeeper_dba"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.connect().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {login}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let newcomer = Uuid::new_v4();
    let added = sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(t.alice)
        .bind(t.alpha)
        .bind(newcomer)
        .execute(&mut conn)
        .await
        .map(drop);
    // Bob is no member of Alpha: acting as him is allowed, succeeding is not.
    let refused = sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(t.bob)
        .bind(t.alpha)
        .bind(Uuid::new_v4())
        .execute(&mut conn)
        .await
        .map(drop);
    sqlx::query("RESET ROLE").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {login}")))
        .execute(&db.pool)
        .await
        .unwrap();
    added.unwrap();
    assert_refusal(
        &refused.unwrap_err(),
        "42501",
        &["is not a member of organization"],
    );
}

#[tokio::test]
async fn the_application_creates_its_own_personal_org_only() {
    let db = TestDb::migrated().await;
    let t = tenants(&db).await;
    let mut conn = app(&db, Some(t.alice)).await;
    let id: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
        .bind(t.alice)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(id, t.alice);
    let err = sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(t.bob)
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "{err}");
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM orgkeeper.org ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        names,
        ["Alpha".to_string(), format!("user_{}_org", t.alice)]
    );
}

#[tokio::test]
async fn a_daemon_login_role_can_execute_every_function_the_daemon_uses() {
    let db = TestDb::migrated().await;
    let secret_id: i64 = sqlx::query_scalar(
        "INSERT INTO orgkeeper.custom_secrets (user_id, secret_name, secret_value)
         VALUES (gen_random_uuid(), 'GH', 'legacy:gh') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let login = LoginRole::create(&db, "ok_daemon", "orgkeeper_daemon").await;
    let mut conn = login.connect().await;
    let worker = "daemon-test";

    let swept: i32 = sqlx::query_scalar("SELECT orgkeeper.sweep_expired_leases()")
        .fetch_one(&mut conn)
        .await
        .expect("sweep_expired_leases");
    assert_eq!(swept, 0);
    let claimed: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM orgkeeper.claim_actions($1, 10, interval '1 minute')")
            .bind(worker)
            .fetch_all(&mut conn)
            .await
            .expect("claim_actions on an empty queue");
    assert!(claimed.is_empty());

    // Seven organizations, seven provisioning actions, one per write-back.
    let orgs = crate::support::insert_orgs(&db.pool, "Daemon Test", 7).await;
    let claimed: Vec<(i64, String, Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, locked_by, org_id, user_id FROM orgkeeper.claim_actions($1, 10, interval '1 minute') ORDER BY id",
    )
    .bind(worker)
    .fetch_all(&mut conn)
    .await
    .expect("claim_actions");
    assert_eq!(claimed.len(), 7);
    let mut claimed_orgs: Vec<Uuid> = claimed.iter().map(|c| c.2).collect();
    claimed_orgs.sort();
    let mut sorted_orgs = orgs.clone();
    sorted_orgs.sort();
    assert_eq!(claimed_orgs, sorted_orgs);

    // 0: progress, heartbeat, context and the full write-back.
    let (id, token) = (claimed[0].0, claimed[0].1.clone());
    let saved: bool = sqlx::query_scalar("SELECT orgkeeper.save_progress($1, $2, '{\"step\": 1}')")
        .bind(id)
        .bind(&token)
        .fetch_one(&mut conn)
        .await
        .expect("save_progress");
    assert!(saved);
    // extend_lease is the newest daemon function; call it where it exists.
    let has_extend: bool = sqlx::query_scalar(
        "SELECT to_regprocedure('orgkeeper.extend_lease(bigint, text, interval)') IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    if has_extend {
        let extended: bool =
            sqlx::query_scalar("SELECT orgkeeper.extend_lease($1, $2, interval '1 minute')")
                .bind(id)
                .bind(&token)
                .fetch_one(&mut conn)
                .await
                .expect("extend_lease");
        assert!(extended);
    }
    let (org, owner) = (claimed[0].2, claimed[0].3);
    let (name, context_owner): (String, Uuid) =
        sqlx::query_as("SELECT org_name, owner_id FROM orgkeeper.provisioning_context($1, NULL)")
            .bind(org)
            .fetch_one(&mut conn)
            .await
            .expect("provisioning_context");
    assert!(name.starts_with("Daemon Test"), "{name}");
    assert_eq!(context_owner, owner);
    let outcome: String = sqlx::query_scalar(
        "SELECT orgkeeper.record_org_provisioned($1, $2, 'team-0', $3, 'model', 'https://llm', 'ok1:key', '{}')",
    )
    .bind(id)
    .bind(&token)
    .bind(owner)
    .fetch_one(&mut conn)
    .await
    .expect("record_org_provisioned");
    assert_eq!(outcome, "done");

    // 1..6: the other ways an action ends or goes back to the queue.
    let calls: [(usize, &str); 8] = [
        (1, "SELECT orgkeeper.complete_action($1, $2, '{}')"),
        (
            2,
            "SELECT orgkeeper.retry_action_later($1, $2, 'flaky', interval '1 hour')",
        ),
        (3, "SELECT orgkeeper.begin_compensation($1, $2, 'boom')"),
        (
            3,
            "SELECT orgkeeper.record_provisioning_failed($1, $2, 'compensated', 'boom', '{}')",
        ),
        (4, "SELECT orgkeeper.begin_compensation($1, $2, 'boom')"),
        (
            4,
            "SELECT orgkeeper.finish_action($1, $2, 'failed', '{}', 'cleanup failed')",
        ),
        (5, "SELECT orgkeeper.release_action($1, $2)"),
        (
            6,
            "SELECT orgkeeper.record_team_ready($1, $2, 'team-6', '{}')",
        ),
    ];
    for (i, sql) in calls {
        let (id, token) = (claimed[i].0, claimed[i].1.clone());
        let wrote: bool = sqlx::query_scalar(sql)
            .bind(id)
            .bind(&token)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(wrote, "{sql}");
    }

    // Re-encryption: read a ciphertext and swap it.
    let key = serde_json::json!({ "id": secret_id });
    let value: Option<String> =
        sqlx::query_scalar("SELECT orgkeeper.read_secret('custom_secrets', 'secret_value', $1)")
            .bind(&key)
            .fetch_one(&mut conn)
            .await
            .expect("read_secret");
    assert_eq!(value.as_deref(), Some("legacy:gh"));
    let unwritten: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.replace_secrets(jsonb_build_array(jsonb_build_object(
             'table', 'custom_secrets', 'column', 'secret_value', 'key', $1::jsonb, 'old', 'legacy:gh', 'new', 'ok1:gh')))",
    )
    .bind(&key)
    .fetch_one(&mut conn)
    .await
    .expect("replace_secrets");
    assert_eq!(unwritten, 0);
    conn.close().await.unwrap();

    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM orgkeeper.pending_external_actions WHERE id = ANY ($1) ORDER BY id",
    )
    .bind(claimed.iter().map(|c| c.0).collect::<Vec<_>>())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [
            "done",
            "done",
            "pending",
            "compensated",
            "failed",
            "pending",
            "done"
        ]
    );
    let (team, secret): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT litellm_team_id FROM orgkeeper.org WHERE id = $1),
                (SELECT secret_value FROM orgkeeper.custom_secrets WHERE id = $2)",
    )
    .bind(org)
    .bind(secret_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(team.as_deref(), Some("team-0"));
    assert_eq!(secret.as_deref(), Some("ok1:gh"));
}

#[tokio::test]
async fn every_daemon_function_and_every_orgkeeper_function_it_calls_is_executable_by_the_daemon() {
    let db = TestDb::migrated().await;
    // "Daemon:" functions run as the daemon (they are not SECURITY DEFINER),
    // so what they call needs the daemon's EXECUTE too. Calls are found in
    // the bodies as "orgkeeper.<name>(".
    let missing: Vec<String> = sqlx::query_scalar(
        "WITH daemon_fn AS (
             SELECT p.oid FROM pg_proc p
              WHERE p.pronamespace = 'orgkeeper'::regnamespace
                AND obj_description(p.oid, 'pg_proc') LIKE 'Daemon:%'
         ), needed AS (
             SELECT d.oid AS caller, d.oid AS callee FROM daemon_fn d
             UNION
             SELECT d.oid, c.oid
               FROM daemon_fn d
               JOIN pg_proc dp ON dp.oid = d.oid
              CROSS JOIN LATERAL regexp_matches(pg_get_functiondef(dp.oid), 'orgkeeper\\.([a-z_0-9]+)\\s*\\(', 'g') AS m
               JOIN pg_proc c ON c.pronamespace = 'orgkeeper'::regnamespace AND c.proname = m[1]
         )
         SELECT DISTINCT n.callee::regprocedure::text || ' (needed by ' || n.caller::regprocedure::text || ')'
           FROM needed n
          WHERE NOT has_function_privilege('orgkeeper_daemon', n.callee, 'EXECUTE')
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        missing.is_empty(),
        "not executable by orgkeeper_daemon: {missing:?}"
    );

    let daemon_functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = 'orgkeeper'::regnamespace
            AND obj_description(p.oid, 'pg_proc') LIKE 'Daemon:%'
          ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for expected in [
        "begin_compensation",
        "claim_actions",
        "complete_action",
        "finish_action",
        "provisioning_context",
        "read_secret",
        "record_org_provisioned",
        "record_provisioning_failed",
        "record_team_ready",
        "release_action",
        "replace_secrets",
        "retry_action_later",
        "save_progress",
        "sweep_expired_leases",
    ] {
        assert!(
            daemon_functions.iter().any(|f| f == expected),
            "{expected} is not a \"Daemon:\" function: {daemon_functions:?}"
        );
    }
}

#[tokio::test]
async fn the_application_cannot_skip_the_provisioning_of_its_organizations() {
    let db = TestDb::migrated().await;
    let user = Uuid::new_v4();
    let mut conn = app(&db, Some(user)).await;
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1)")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    // The setting user migration uses; any session can set a custom setting.
    sqlx::query("SET orgkeeper.skip_provision = 'on'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ('Sneaky One', $1)")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.create_org('Sneaky Two', $1)")
        .bind(user)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let kinds: Vec<(String, String)> = sqlx::query_as(
        "SELECT o.name, a.kind FROM orgkeeper.org o
           JOIN orgkeeper.pending_external_actions a ON a.org_id = o.id
          WHERE o.created_by = $1 ORDER BY o.name",
    )
    .bind(user)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        vec![
            (
                "Sneaky One".to_string(),
                "litellm.provision_org".to_string()
            ),
            (
                "Sneaky Two".to_string(),
                "litellm.provision_org".to_string()
            ),
        ]
    );

    // A trusted caller (here a superuser; user migration runs as a DBA)
    // still skips it.
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('orgkeeper.skip_provision', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let trusted: Uuid = sqlx::query_scalar(
        "WITH u AS (INSERT INTO orgkeeper.users (id) VALUES (gen_random_uuid()) RETURNING id)
                            SELECT orgkeeper.create_org('Trusted', u.id) FROM u",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let actions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE org_id = $1",
    )
    .bind(trusted)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(actions, 0);
}

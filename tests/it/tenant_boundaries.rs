//! Stories about tenant boundaries against a hostile application user
//! (issue 10, and issue 9 item 5): whatever a session granted
//! `orgkeeper_app` can do after `SET orgkeeper.user_id = '<uuid>'` is what a
//! malicious user can do. Each story is told by the attacker: the attack is
//! refused with a SQLSTATE, a message naming the object and a hint, and
//! nothing changed; the legitimate path still works.

use crate::support::{
    app, assert_refusal, begin_with_snapshot, db_error, personal, refused, state, team, user,
    LoginRole, TestDb,
};
use sqlx::PgConnection;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Adds an active member through a trusted session (as a DBA would).
async fn trusted_add(db: &TestDb, actor: Uuid, org: Uuid, who: Uuid, role: &str) {
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, $4)")
        .bind(actor)
        .bind(org)
        .bind(who)
        .bind(role)
        .execute(&db.pool)
        .await
        .expect("add_member");
}

/// Calls `sql` with uuid arguments on a connection.
async fn call(conn: &mut PgConnection, sql: &str, args: &[Uuid]) -> Result<u64, sqlx::Error> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for a in args {
        query = query.bind(*a);
    }
    query.execute(conn).await.map(|r| r.rows_affected())
}

async fn membership(db: &TestDb, org: Uuid, who: Uuid) -> Option<(String, String)> {
    sqlx::query_as(
        "SELECT r.name, m.status FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
          WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org)
    .bind(who)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

async fn current_org(db: &TestDb, who: Uuid) -> Option<Uuid> {
    sqlx::query_scalar("SELECT current_org_id FROM orgkeeper.users WHERE id = $1")
        .bind(who)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// 2. membership without consent
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item2_an_app_user_cannot_make_someone_a_member_or_point_their_current_org_without_consent()
{
    let db = TestDb::migrated().await;
    let mallory = user(&db, "mallory@evil.test").await;
    let evil = team(&db, "Evil Corp", mallory).await;
    let vic = Uuid::new_v4(); // has not signed up yet
    let mut m = app(&db, Some(mallory)).await;

    // Mallory adds Vic: the membership is only an invitation, and Vic's
    // current organization stays unset.
    call(
        &mut m,
        "SELECT orgkeeper.add_member($1, $2, $3, 'member')",
        &[mallory, evil, vic],
    )
    .await
    .unwrap();
    assert_eq!(
        membership(&db, evil, vic).await,
        Some(("member".into(), "invited".into()))
    );
    assert_eq!(current_org(&db, vic).await, None);

    // She can neither accept on Vic's behalf nor point Vic at her org.
    let before = state(&db.pool).await;
    refused(
        call(
            &mut m,
            "SELECT orgkeeper.accept_membership($1, $2)",
            &[vic, evil],
        )
        .await,
        "42501",
        &[&format!(
            "accept_membership: user {mallory} cannot act as user {vic}"
        )],
    );
    assert_eq!(
        call(
            &mut m,
            "UPDATE orgkeeper.users SET current_org_id = $1 WHERE id = $2",
            &[evil, vic]
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(state(&db.pool).await, before, "nothing changed");

    // Vic signs up: his personal organization is his current one, and an
    // invited membership gives him no access to Evil Corp (nor his
    // secrets a way into it).
    let mut v = app(&db, Some(vic)).await;
    call(&mut v, "SELECT orgkeeper.create_personal_org($1)", &[vic])
        .await
        .unwrap();
    assert_eq!(current_org(&db, vic).await, Some(vic));
    let visible: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orgkeeper.org")
        .fetch_all(&mut v)
        .await
        .unwrap();
    assert_eq!(visible, [vic]);
    let err = call(
        &mut v,
        "INSERT INTO orgkeeper.custom_secrets (user_id, org_id, secret_name) VALUES ($1, $2, 'GH')",
        &[vic, evil],
    )
    .await
    .unwrap_err();
    assert_eq!(db_error(&err).0, "42501", "{err}");

    // Only Vic decides: declining removes the invitation ...
    call(
        &mut v,
        "SELECT orgkeeper.decline_membership($1, $2)",
        &[vic, evil],
    )
    .await
    .unwrap();
    assert_eq!(membership(&db, evil, vic).await, None);
    refused(
        call(
            &mut v,
            "SELECT orgkeeper.accept_membership($1, $2)",
            &[vic, evil],
        )
        .await,
        "P0002",
        &[&format!(
            "accept_membership: user {vic} has no pending invitation to organization {evil}"
        )],
    );
    // ... accepting makes him a member, and his current org stays his choice.
    call(
        &mut m,
        "SELECT orgkeeper.add_member($1, $2, $3, 'member')",
        &[mallory, evil, vic],
    )
    .await
    .unwrap();
    call(
        &mut v,
        "SELECT orgkeeper.accept_membership($1, $2)",
        &[vic, evil],
    )
    .await
    .unwrap();
    assert_eq!(
        membership(&db, evil, vic).await,
        Some(("member".into(), "active".into()))
    );
    assert_eq!(current_org(&db, vic).await, Some(vic));
    // Only then does he join the LiteLLM team (and get a key): once.
    let joins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions
          WHERE kind = 'litellm.add_member' AND org_id = $1 AND user_id = $2",
    )
    .bind(evil)
    .bind(vic)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(joins, 1);

    // A DBA in psql (a trusted role) still adds active members.
    let dba = LoginRole::create(&db, "ok_dba", "orgkeeper_dba").await;
    let mut d = dba.connect().await;
    let walt = Uuid::new_v4();
    call(
        &mut d,
        "SELECT orgkeeper.add_member($1, $2, $3, 'member')",
        &[mallory, evil, walt],
    )
    .await
    .unwrap();
    assert_eq!(
        membership(&db, evil, walt).await,
        Some(("member".into(), "active".into()))
    );
}

// ---------------------------------------------------------------------------
// 1. the owner invariant at every isolation level
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item1_two_owners_racing_to_leave_and_demote_each_other_cannot_orphan_an_org_at_any_isolation_level(
) {
    let db = TestDb::migrated().await;
    // Each race also inside savepoints, as an application may run its
    // calls: a subtransaction opens no gap. (The bump skipped inside a
    // savepoint has its own story in schema.rs.)
    for (level, sqlstate, nested) in [
        ("READ COMMITTED", "23514", false),
        ("REPEATABLE READ", "40001", false),
        ("SERIALIZABLE", "40001", false),
        ("READ COMMITTED", "23514", true),
        ("REPEATABLE READ", "40001", true),
        ("SERIALIZABLE", "40001", true),
    ] {
        let level_name = level;
        let level = if nested {
            format!("{level} in savepoints")
        } else {
            level.to_string()
        };
        let level = level.as_str();
        // Ann and Ben own both X and Y.
        let ann = user(&db, "ann@x.test").await;
        let ben = user(&db, "ben@x.test").await;
        let x = team(&db, &format!("X {level}"), ann).await;
        let y = team(&db, &format!("Y {level}"), ann).await;
        trusted_add(&db, ann, x, ben, "owner").await;
        trusted_add(&db, ann, y, ben, "owner").await;

        let mut t1 = app(&db, Some(ann)).await;
        let mut t2 = app(&db, Some(ben)).await;
        for conn in [&mut t1, &mut t2] {
            // Each reads the memberships first: the snapshot is taken.
            begin_with_snapshot(conn, level_name).await;
            if nested {
                sqlx::query("SAVEPOINT changes")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        }
        // Ann leaves X and demotes Ben in Y.
        call(&mut t1, "SELECT orgkeeper.leave_org($1, $2)", &[ann, x])
            .await
            .unwrap();
        call(
            &mut t1,
            "SELECT orgkeeper.change_member_role($1, $2, $3, 'admin')",
            &[ann, y, ben],
        )
        .await
        .unwrap();
        // Ben, meanwhile, leaves X (and would demote Ann in Y).
        let ben_leaves = tokio::spawn(async move {
            let outcome = call(&mut t2, "SELECT orgkeeper.leave_org($1, $2)", &[ben, x]).await;
            (t2, outcome)
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !ben_leaves.is_finished(),
            "{level}: Ben's change waits for Ann's transaction"
        );
        if nested {
            sqlx::query("RELEASE SAVEPOINT changes")
                .execute(&mut t1)
                .await
                .unwrap();
        }
        sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
        let (mut t2, outcome) = ben_leaves.await.unwrap();
        let (code, message) = db_error(&outcome.unwrap_err());
        assert_eq!(code, sqlstate, "{level}: {message}");
        if sqlstate == "23514" {
            assert!(
                message.contains(&format!(
                    "user {ben} is the last owner of organization \"X {level}\""
                )),
                "{message}"
            );
        } else {
            assert!(message.contains("could not serialize access"), "{message}");
        }
        sqlx::query("ROLLBACK").execute(&mut t2).await.unwrap();

        // X keeps its owner Ben; in Y Ann is the owner and Ben an admin.
        assert_eq!(membership(&db, x, ann).await, None, "{level}");
        assert_eq!(
            membership(&db, x, ben).await,
            Some(("owner".into(), "active".into())),
            "{level}"
        );
        assert_eq!(
            membership(&db, y, ann).await,
            Some(("owner".into(), "active".into())),
            "{level}"
        );
        assert_eq!(
            membership(&db, y, ben).await,
            Some(("admin".into(), "active".into())),
            "{level}"
        );
    }
}

// ---------------------------------------------------------------------------
// issue 9, item 5: who reads which ciphertext
// ---------------------------------------------------------------------------

#[tokio::test]
async fn issue9_item5_a_member_reads_only_their_own_key_and_never_another_members_or_the_orgs() {
    let db = TestDb::migrated().await;
    let ann = user(&db, "ann@keys.test").await;
    let ben = user(&db, "ben@keys.test").await;
    let org = team(&db, "Keyholders", ann).await;
    trusted_add(&db, ann, org, ben, "member").await;
    sqlx::query(
        "UPDATE orgkeeper.org SET llm_api_key = 'ok2:k:org', llm_api_key_for_byor = 'ok2:k:byor',
                search_api_key = 'ok2:k:search', sandbox_api_key = 'ok2:k:sandbox' WHERE id = $1;",
    )
    .bind(org)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE orgkeeper.org_member SET llm_api_key = 'ok2:k:' || user_id::text WHERE org_id = $1",
    )
    .bind(org)
    .execute(&db.pool)
    .await
    .unwrap();

    // Ben, a plain member, goes for Ann's key and the organization's keys.
    let mut b = app(&db, Some(ben)).await;
    for sql in [
        "SELECT llm_api_key FROM orgkeeper.org_member WHERE user_id = $1",
        "SELECT * FROM orgkeeper.org_member WHERE user_id = $1",
        "SELECT llm_api_key FROM orgkeeper.org WHERE created_by = $1",
        "SELECT llm_api_key_for_byor, search_api_key, sandbox_api_key FROM orgkeeper.org WHERE created_by = $1",
        "SELECT * FROM orgkeeper.org WHERE created_by = $1",
    ] {
        let err = call(&mut b, sql, &[ann]).await.unwrap_err();
        assert_refusal(&err, "42501", &["permission denied for table"]);
    }
    refused(
        call(
            &mut b,
            "SELECT * FROM orgkeeper.org_secrets($1, $2)",
            &[ben, org],
        )
        .await,
        "42501",
        &[&format!(
            "user {ben} has role member in organization \"Keyholders\"; only owners and admins can read its keys"
        )],
    );
    refused(
        call(
            &mut b,
            "SELECT * FROM orgkeeper.org_secrets($1, $2)",
            &[ann, org],
        )
        .await,
        "42501",
        &[&format!("org_secrets: user {ben} cannot act as user {ann}")],
    );
    // His own key he reads; everything else about the org too.
    let mine: Option<String> = sqlx::query_scalar("SELECT orgkeeper.my_llm_api_key($1)")
        .bind(org)
        .fetch_one(&mut b)
        .await
        .unwrap();
    assert_eq!(mine, Some(format!("ok2:k:{ben}")));
    let (name, members): (String, i64) = sqlx::query_as(
        "SELECT o.name, (SELECT count(*) FROM orgkeeper.org_member m WHERE m.org_id = o.id)
           FROM orgkeeper.org o WHERE o.id = $1",
    )
    .bind(org)
    .fetch_one(&mut b)
    .await
    .unwrap();
    assert_eq!((name.as_str(), members), ("Keyholders", 2));

    // No "my" key without naming the user, nor outside one's organizations.
    let mut nobody = app(&db, None).await;
    refused(
        call(&mut nobody, "SELECT orgkeeper.my_llm_api_key($1)", &[org]).await,
        "42501",
        &["my_llm_api_key: orgkeeper.user_id is not set"],
    );
    let outsider = user(&db, "eve@keys.test").await;
    let mut e = app(&db, Some(outsider)).await;
    refused(
        call(&mut e, "SELECT orgkeeper.my_llm_api_key($1)", &[org]).await,
        "42501",
        &[&format!(
            "my_llm_api_key: user {outsider} is not an active member of organization {org}"
        )],
    );

    // The owner reads the organization's keys.
    let mut a = app(&db, Some(ann)).await;
    let keys: (String, String, String, String) =
        sqlx::query_as("SELECT * FROM orgkeeper.org_secrets($1, $2)")
            .bind(ann)
            .bind(org)
            .fetch_one(&mut a)
            .await
            .unwrap();
    assert_eq!(
        keys,
        (
            "ok2:k:org".into(),
            "ok2:k:byor".into(),
            "ok2:k:search".into(),
            "ok2:k:sandbox".into()
        )
    );

    // Every key column of org and org_member (orgkeeper.secret_columns())
    // is hidden, and the proxy's provisioning error (item 8), and only those.
    let readable: Vec<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, a.attname::text,
                has_column_privilege('orgkeeper_app', c.oid, a.attname, 'SELECT'),
                EXISTS (SELECT 1 FROM orgkeeper.secret_columns() s
                         WHERE s.table_name = c.relname AND s.column_name = a.attname)
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          WHERE c.oid IN ('orgkeeper.org'::regclass, 'orgkeeper.org_member'::regclass)
            AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut secret = Vec::new();
    for (table, column, granted, is_secret) in readable {
        let hidden = is_secret || (table == "org" && column == "provisioning_error");
        assert_eq!(granted, !hidden, "{table}.{column}");
        if is_secret {
            secret.push(format!("{table}.{column}"));
        }
    }
    for column in [
        "org.llm_api_key",
        "org.llm_api_key_for_byor",
        "org.search_api_key",
        "org.sandbox_api_key",
        "org_member.llm_api_key",
    ] {
        assert!(secret.iter().any(|s| s == column), "{column}: {secret:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. invitations match verified emails only
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item3_an_app_user_who_sets_their_email_to_the_invited_one_cannot_accept_the_invitation() {
    let db = TestDb::migrated().await;
    let olive = user(&db, "olive@acme.test").await;
    let acme = team(&db, "Acme", olive).await;
    let token: String = sqlx::query_scalar(
        "SELECT orgkeeper.create_invitation($1, $2, 'carol@acme.test', 'admin')",
    )
    .bind(olive)
    .bind(acme)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Mallory got hold of Carol's token and claims Carol's address.
    let mallory = user(&db, "mallory@evil.test").await;
    let mut m = app(&db, Some(mallory)).await;
    call(
        &mut m,
        "UPDATE orgkeeper.users SET email = 'carol@acme.test' WHERE id = $1",
        &[mallory],
    )
    .await
    .unwrap();
    let verified: Option<bool> =
        sqlx::query_scalar("SELECT email_verified FROM orgkeeper.users WHERE id = $1")
            .bind(mallory)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        verified,
        Some(false),
        "changing the email resets verification"
    );
    // She cannot verify it herself, on update or insert.
    for sql in [
        "UPDATE orgkeeper.users SET email_verified = true WHERE id = $1",
        "INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, 'x@y.test', true) ON CONFLICT DO NOTHING",
    ] {
        let err = call(&mut m, sql, &[mallory]).await.unwrap_err();
        assert_refusal(&err, "42501", &["permission denied for table users"]);
    }
    let before = state(&db.pool).await;
    let hint = refused(
        sqlx::query("SELECT orgkeeper.accept_invitation($1, $2)")
            .bind(mallory)
            .bind(&token)
            .execute(&mut m)
            .await,
        "55000",
        &[&format!(
            "user {mallory}'s email is not verified, so the invitation to organization \"Acme\" cannot be matched to it"
        )],
    );
    assert!(hint.contains("identity provider"), "{hint}");
    assert_eq!(state(&db.pool).await, before, "nothing changed");

    // The identity sync verifies Carol's real address; Carol accepts.
    let sync = LoginRole::create(&db, "ok_idp", "orgkeeper_identity").await;
    let mut s = sync.connect().await;
    let carol = Uuid::new_v4();
    call(
        &mut s,
        "INSERT INTO orgkeeper.users (id, email, email_verified) VALUES ($1, 'carol@acme.test', true)",
        &[carol],
    )
    .await
    .unwrap();
    // The sync writes emails only.
    let err = call(
        &mut s,
        "UPDATE orgkeeper.users SET current_org_id = NULL WHERE id = $1",
        &[carol],
    )
    .await
    .unwrap_err();
    assert_refusal(&err, "42501", &[]);
    let mut c = app(&db, Some(carol)).await;
    let joined: Uuid = sqlx::query_scalar("SELECT orgkeeper.accept_invitation($1, $2)")
        .bind(carol)
        .bind(&token)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(joined, acme);

    // Only verified addresses go to LiteLLM (provisioning an org, adding a
    // member): Mallory's claimed one never does.
    personal(&db, mallory).await;
    let emails: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT owner_email FROM orgkeeper.provisioning_context($1, NULL)
         UNION ALL SELECT email FROM orgkeeper.member_key_context($1, $2)
         UNION ALL SELECT owner_email FROM orgkeeper.provisioning_context($3, NULL)
         UNION ALL SELECT email FROM orgkeeper.member_key_context($3, $3)",
    )
    .bind(acme)
    .bind(carol)
    .bind(mallory)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        emails,
        [
            Some("olive@acme.test".to_string()),
            Some("carol@acme.test".to_string()),
            None,
            None
        ]
    );
}

// ---------------------------------------------------------------------------
// 6. members act on other members' rows
// ---------------------------------------------------------------------------

/// The user-owned tables, with a column a row needs besides user_id and org_id.
const USER_OWNED: &[(&str, &str)] = &[
    ("custom_secrets", "secret_name"),
    ("api_keys", "name"),
    ("gitlab_webhook", "group_id"),
    ("slack_users", "slack_user_id"),
    ("user_repos", "repo_id"),
];

async fn own_row(db: &TestDb, table: &str, column: &str, who: Uuid, org: Uuid) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO orgkeeper.{table} (user_id, org_id, {column}) VALUES ($1, $2, 'x')"
    )))
    .bind(who)
    .bind(org)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn item6_a_member_cannot_read_write_or_delete_the_owners_rows_in_user_owned_tables() {
    let db = TestDb::migrated().await;
    let olive = user(&db, "olive@acme.test").await;
    let adam = user(&db, "adam@acme.test").await;
    let mia = user(&db, "mia@acme.test").await;
    let acme = team(&db, "Acme", olive).await;
    trusted_add(&db, olive, acme, adam, "admin").await;
    trusted_add(&db, olive, acme, mia, "member").await;
    for (table, column) in USER_OWNED {
        for who in [olive, mia] {
            own_row(&db, table, column, who, acme).await;
        }
    }
    let before = state(&db.pool).await;

    // Mia goes after Olive's rows in every user-owned table.
    let mut m = app(&db, Some(mia)).await;
    for (table, column) in USER_OWNED {
        let seen: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM orgkeeper.{table} WHERE user_id = $1"
        )))
        .bind(olive)
        .fetch_one(&mut m)
        .await
        .unwrap();
        // Per table: slack identity links are the organization's to read.
        assert_eq!(seen, i64::from(*table == "slack_users"), "{table}");
        for sql in [
            format!("UPDATE orgkeeper.{table} SET {column} = 'pwned' WHERE user_id = $1"),
            format!("DELETE FROM orgkeeper.{table} WHERE user_id = $1"),
        ] {
            assert_eq!(call(&mut m, &sql, &[olive]).await.unwrap(), 0, "{sql}");
        }
        // Rows attributed to Olive, new or handed over, are refused.
        for sql in [
            format!("INSERT INTO orgkeeper.{table} (user_id, org_id, {column}) VALUES ($1, $2, 'forged')"),
            format!("UPDATE orgkeeper.{table} SET user_id = $1 WHERE org_id = $2"),
        ] {
            let hint = refused(
                call(&mut m, &sql, &[olive, acme]).await,
                "42501",
                &[&format!(
                    "user {mia} cannot write a {table} row that belongs to user {olive}"
                )],
            );
            assert!(hint.contains("write your own"), "{hint}");
        }
    }
    // An admin does not manage the owner either.
    let mut a = app(&db, Some(adam)).await;
    for (table, _) in USER_OWNED {
        let sql = format!("DELETE FROM orgkeeper.{table} WHERE user_id = $1");
        assert_eq!(call(&mut a, &sql, &[olive]).await.unwrap(), 0, "{sql}");
    }
    assert_eq!(state(&db.pool).await, before, "nothing changed");

    // Mia keeps her own rows; the owner may delete a member's.
    let mut o = app(&db, Some(olive)).await;
    for (table, column) in USER_OWNED {
        let sql = format!("UPDATE orgkeeper.{table} SET {column} = 'mine' WHERE user_id = $1");
        assert_eq!(call(&mut m, &sql, &[mia]).await.unwrap(), 1, "{sql}");
        let sql = format!("DELETE FROM orgkeeper.{table} WHERE user_id = $1");
        assert_eq!(call(&mut o, &sql, &[mia]).await.unwrap(), 1, "{sql}");
    }
}

// ---------------------------------------------------------------------------
// 4. forged billing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item4_a_member_cannot_forge_billing_and_migration_counts_only_the_users_own_legacy_sessions(
) {
    let db = TestDb::migrated().await;
    // Mallory is a legacy user (not migrated yet) who also owns an org.
    let mallory = user(&db, "mallory@evil.test").await;
    let evil = team(&db, "Evil Corp", mallory).await;
    sqlx::query(
        "INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, 'mallory@evil.test')",
    )
    .bind(mallory)
    .execute(&db.pool)
    .await
    .unwrap();
    let session: String = sqlx::query_scalar(
        "INSERT INTO orgkeeper.billing_sessions (user_id, org_id, status, price) VALUES ($1, $2, 'in_progress', 50)
         RETURNING id",
    )
    .bind(mallory)
    .bind(evil)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let before = state(&db.pool).await;

    let mut m = app(&db, Some(mallory)).await;
    for sql in [
        "INSERT INTO orgkeeper.billing_sessions (user_id, org_id, status, price) VALUES ($1, $2, 'completed', 0)",
        "UPDATE orgkeeper.billing_sessions SET status = 'completed', price = 0 WHERE user_id = $1 AND org_id = $2",
        "DELETE FROM orgkeeper.billing_sessions WHERE user_id = $1 AND org_id = $2",
    ] {
        let err = call(&mut m, sql, &[mallory, evil]).await.unwrap_err();
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{sql}");
        assert_eq!(message, "permission denied for table billing_sessions", "{sql}");
    }
    // She still reads her organization's billing.
    let seen: Vec<String> = sqlx::query_scalar("SELECT id FROM orgkeeper.billing_sessions")
        .fetch_all(&mut m)
        .await
        .unwrap();
    assert_eq!(seen, std::slice::from_ref(&session));
    assert_eq!(state(&db.pool).await, before, "nothing changed");

    // Even completed (by the billing path), an organization's session is
    // not the user's legacy history: migration leaves BYOR export off.
    sqlx::query("UPDATE orgkeeper.billing_sessions SET status = 'completed' WHERE id = $1")
        .bind(&session)
        .execute(&db.pool)
        .await
        .unwrap();
    let report: serde_json::Value = sqlx::query_scalar("SELECT orgkeeper.migrate_user($1)")
        .bind(mallory)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(report["status"], "migrated", "{report}");
    assert_eq!(report["byor_export_enabled"], false, "{report}");
}

// ---------------------------------------------------------------------------
// 5. chosen primary keys in shared tables
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item5_an_app_user_cannot_choose_ids_and_a_squatted_conversation_id_is_a_migration_conflict(
) {
    let db = TestDb::migrated().await;
    let mallory = user(&db, "mallory@evil.test").await;
    let evil = team(&db, "Evil Corp", mallory).await;
    let before = state(&db.pool).await;

    // Pre-claiming the next ids of every shared identity table is refused.
    let tables = [
        ("api_keys", "name"),
        ("custom_secrets", "secret_name"),
        ("gitlab_webhook", "group_id"),
        ("slack_users", "slack_user_id"),
        ("user_repos", "repo_id"),
        ("slack_conversation", "channel_id"),
    ];
    let mut m = app(&db, Some(mallory)).await;
    for (table, column) in tables {
        for sql in [
            format!("INSERT INTO orgkeeper.{table} (id, user_id, org_id, {column}) SELECT g, $1, $2, 'x' FROM generate_series(1, 100000) g"),
            format!("INSERT INTO orgkeeper.{table} (id, user_id, org_id, {column}) OVERRIDING SYSTEM VALUE VALUES (1, $1, $2, 'x')"),
        ] {
            let err = call(&mut m, &sql, &[mallory, evil]).await.unwrap_err();
            let (code, message) = db_error(&err);
            assert_eq!(code, "42501", "{sql}");
            assert_eq!(message, format!("permission denied for table {table}"), "{sql}");
        }
        let err = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT nextval('orgkeeper.{table}_id_seq')"
        )))
        .execute(&mut m)
        .await
        .unwrap_err();
        assert_eq!(
            db_error(&err),
            (
                "42501".to_string(),
                format!("permission denied for sequence {table}_id_seq")
            )
        );
    }
    assert_eq!(state(&db.pool).await, before, "nothing changed");
    // Without an id, the database picks one.
    for (table, column) in tables {
        call(
            &mut m,
            &format!(
                "INSERT INTO orgkeeper.{table} (user_id, org_id, {column}) VALUES ($1, $2, 'ok')"
            ),
            &[mallory, evil],
        )
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    }

    // Vic, a legacy user, has a conversation; Mallory squats its id first.
    let vic = Uuid::new_v4();
    for sql in [
        "INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, 'vic@example.com')",
        "INSERT INTO orgkeeper.conversation_metadata (conversation_id, user_id, title) VALUES ('conv-vic', $1, 'mine')",
    ] {
        sqlx::query(sql).bind(vic).execute(&db.pool).await.unwrap();
    }
    call(
        &mut m,
        "INSERT INTO orgkeeper.conversation_metadata_saas (conversation_id, user_id, org_id) VALUES ('conv-vic', $1, $2)",
        &[mallory, evil],
    )
    .await
    .unwrap();
    let report: serde_json::Value = sqlx::query_scalar("SELECT orgkeeper.migrate_user($1)")
        .bind(vic)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(report["conversations_copied"], 0, "{report}");
    assert_eq!(
        report["conflicts"]["conversation_metadata_saas"],
        serde_json::json!([{"conversation_id": "conv-vic", "org_id": evil, "user_id": mallory}]),
        "{report}"
    );
    let (ok, detail): (bool, String) = sqlx::query_as(
        "SELECT ok, detail FROM orgkeeper.verify_user_migration($1) WHERE check_name = 'conversations_copied'",
    )
    .bind(vic)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!ok, "{detail}");
    assert!(
        detail.contains(&format!(
            "conflict, owned by another organization or user: conv-vic (organization {evil}, user {mallory})"
        )),
        "{detail}"
    );
}

// ---------------------------------------------------------------------------
// 8. small leaks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item8_names_invitations_deletions_listings_and_errors_leak_nothing_and_lose_no_one() {
    let db = TestDb::migrated().await;
    let olive = user(&db, "olive@acme.test").await;
    let adam = user(&db, "adam@acme.test").await;
    let mia = user(&db, "mia@acme.test").await;
    let mallory = user(&db, "mallory@evil.test").await;
    for u in [olive, adam, mia, mallory] {
        personal(&db, u).await;
    }
    let acme = team(&db, "Acme", olive).await;
    trusted_add(&db, olive, acme, adam, "admin").await;
    trusted_add(&db, olive, acme, mia, "member").await;
    let mut m = app(&db, Some(mallory)).await;

    // Names: a personal org is named after the id, never the email ...
    let name: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
        .bind(mia)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(name, format!("user_{mia}_org"));
    // ... nobody can squat another user's, and a creator the allow-list
    // refuses learns nothing about which names exist.
    let before = state(&db.pool).await;
    refused(
        call(
            &mut m,
            &format!("INSERT INTO orgkeeper.org (name, created_by) VALUES ('user_{adam}_org', $1)"),
            &[mallory],
        )
        .await,
        "23514",
        &[&format!(
            "organization name \"user_{adam}_org\" is reserved for the personal organization of user {adam}"
        )],
    );
    sqlx::query("SELECT orgkeeper.policy_allow('email', 'olive@acme.test', 'a DBA')")
        .execute(&db.pool)
        .await
        .unwrap();
    let before_allowlist = state(&db.pool).await;
    for taken_or_not in ["Acme", "Nobody Has This Name"] {
        refused(
            call(
                &mut m,
                &format!("INSERT INTO orgkeeper.org (name, created_by) VALUES ('{taken_or_not}', $1)"),
                &[mallory],
            )
            .await,
            "42501",
            &[&format!(
                "user {mallory} may not create organization \"{taken_or_not}\": the email domain \"evil.test\" is not allowed"
            )],
        );
    }
    assert_eq!(state(&db.pool).await, before_allowlist, "nothing changed");
    sqlx::query("DELETE FROM orgkeeper.org_creation_policy")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(state(&db.pool).await, before, "nothing changed");

    // Invitations: the admin cannot replace the owner's open invitation.
    let mut o = app(&db, Some(olive)).await;
    let mut a = app(&db, Some(adam)).await;
    let token: String = sqlx::query_scalar(
        "SELECT orgkeeper.create_invitation($1, $2, 'carol@acme.test', 'admin')",
    )
    .bind(olive)
    .bind(acme)
    .fetch_one(&mut o)
    .await
    .unwrap();
    let before = state(&db.pool).await;
    refused(
        sqlx::query("SELECT orgkeeper.create_invitation($1, $2, 'Carol@acme.test', 'member')")
            .bind(adam)
            .bind(acme)
            .execute(&mut a)
            .await,
        "42501",
        &[&format!(
            "user {adam} cannot replace the open invitation of Carol@acme.test to organization \"Acme\" (role admin, from user {olive}), which outranks them"
        )],
    );
    assert_eq!(
        state(&db.pool).await,
        before,
        "the owner's invitation stands"
    );
    // (The owner may replace it.)
    let renewed: String = sqlx::query_scalar(
        "SELECT orgkeeper.create_invitation($1, $2, 'carol@acme.test', 'member')",
    )
    .bind(olive)
    .bind(acme)
    .fetch_one(&mut o)
    .await
    .unwrap();
    assert_ne!(renewed, token);

    // Listings: invited shows what it takes to decide, disabled nothing.
    call(
        &mut m,
        "SELECT orgkeeper.add_member($1, $2, $3, 'member')",
        &[mallory, mallory, mia],
    )
    .await
    .unwrap();
    sqlx::query(
        "UPDATE orgkeeper.org_member SET status = 'disabled' WHERE org_id = $1 AND user_id = $2",
    )
    .bind(acme)
    .bind(mia)
    .execute(&db.pool)
    .await
    .unwrap();
    let listed: Vec<(String, String, Option<String>, Option<i32>)> = sqlx::query_as(
        "SELECT name, status, provisioning_status, members FROM orgkeeper.list_orgs($1) ORDER BY status",
    )
    .bind(mia)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        listed,
        vec![
            (
                format!("user_{mia}_org"),
                "active".to_string(),
                Some("pending".to_string()),
                Some(1)
            ),
            (
                format!("user_{mallory}_org"),
                "invited".to_string(),
                None,
                None
            ),
        ]
    );

    // The policy helper answers alike for any org that is not one's own.
    let answers: Vec<bool> = sqlx::query_scalar(
        "SELECT orgkeeper.rls_org_has_no_members(x) FROM unnest(ARRAY[$1, gen_random_uuid()]) x",
    )
    .bind(acme)
    .fetch_all(&mut m)
    .await
    .unwrap();
    assert_eq!(answers, [true, true]);

    // The proxy's error text is for owners and admins.
    sqlx::query("UPDATE orgkeeper.org SET provisioning_error = '{\"error\": \"proxy: key sk-live-x invalid\"}' WHERE id = $1")
        .bind(acme)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE orgkeeper.org_member SET status = 'active' WHERE org_id = $1 AND user_id = $2",
    )
    .bind(acme)
    .bind(mia)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut mi = app(&db, Some(mia)).await;
    let err = call(
        &mut mi,
        "SELECT provisioning_error FROM orgkeeper.org WHERE id = $1",
        &[acme],
    )
    .await
    .unwrap_err();
    assert_eq!(
        db_error(&err),
        (
            "42501".to_string(),
            "permission denied for table org".to_string()
        )
    );
    refused(
        call(
            &mut mi,
            "SELECT orgkeeper.org_provisioning_error($1, $2)",
            &[mia, acme],
        )
        .await,
        "42501",
        &[&format!(
            "user {mia} has role member in organization \"Acme\"; only owners and admins can read why its provisioning failed"
        )],
    );
    let error: serde_json::Value =
        sqlx::query_scalar("SELECT orgkeeper.org_provisioning_error($1, $2)")
            .bind(adam)
            .bind(acme)
            .fetch_one(&mut a)
            .await
            .unwrap();
    assert_eq!(error["error"], "proxy: key sk-live-x invalid");
}

#[tokio::test]
async fn item8_two_concurrent_deletions_cannot_leave_a_shared_member_without_an_organization() {
    let db = TestDb::migrated().await;
    let ann = user(&db, "ann@x.test").await;
    let ben = user(&db, "ben@y.test").await;
    for u in [ann, ben] {
        personal(&db, u).await;
    }
    let x = team(&db, "X", ann).await;
    let y = team(&db, "Y", ben).await;
    // Uma belongs to X and Y and nothing else.
    let uma = Uuid::new_v4();
    trusted_add(&db, ann, x, uma, "member").await;
    trusted_add(&db, ben, y, uma, "member").await;

    let mut t1 = app(&db, Some(ann)).await;
    let mut t2 = app(&db, Some(ben)).await;
    sqlx::query("BEGIN").execute(&mut t1).await.unwrap();
    sqlx::query("BEGIN").execute(&mut t2).await.unwrap();
    call(&mut t1, "SELECT orgkeeper.delete_org($1, $2)", &[ann, x])
        .await
        .unwrap();
    let ben_deletes = tokio::spawn(async move {
        let outcome = call(&mut t2, "SELECT orgkeeper.delete_org($1, $2)", &[ben, y]).await;
        (t2, outcome)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !ben_deletes.is_finished(),
        "the second deletion waits for the first"
    );
    sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
    let (mut t2, outcome) = ben_deletes.await.unwrap();
    let hint = refused(
        outcome,
        "23514",
        &[&format!(
            "organization \"Y\" is the last organization of 1 member(s) ({uma}) and cannot be deleted"
        )],
    );
    assert!(hint.contains("remove those members first"), "{hint}");
    sqlx::query("ROLLBACK").execute(&mut t2).await.unwrap();
    assert_eq!(
        membership(&db, y, uma).await,
        Some(("member".into(), "active".into()))
    );
}

// ---------------------------------------------------------------------------
// 7. anyone can block migrations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item7_an_app_session_cannot_block_a_users_migration_nor_stall_migrate() {
    let db = TestDb::migrated().await;
    let login = LoginRole::create(&db, "ok_app", "orgkeeper_app").await;
    let vic = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO orgkeeper.user_settings (user_id, email) VALUES ($1, 'vic@example.com')",
    )
    .bind(vic)
    .execute(&db.pool)
    .await
    .unwrap();

    // The application holds the advisory locks migrations used to wait on
    // (a hash of the user id, the `migrate` key) and tries the row lock.
    let mut m = login.connect().await;
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('orgkeeper.user:' || $1::text, 0))")
        .bind(vic)
        .execute(&mut m)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock(8030594796515324005)") // "orgkeeper", src/db.rs
        .execute(&mut m)
        .await
        .unwrap();
    let err = call(
        &mut m,
        "SELECT 1 FROM orgkeeper.user_settings WHERE user_id = $1 FOR UPDATE",
        &[vic],
    )
    .await
    .unwrap_err();
    assert_eq!(
        db_error(&err),
        (
            "42501".to_string(),
            "permission denied for table user_settings".to_string()
        )
    );
    // The migration does not wait for it.
    let started = std::time::Instant::now();
    let report: serde_json::Value = sqlx::query_scalar("SELECT orgkeeper.migrate_user($1)")
        .bind(vic)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(report["status"], "migrated");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // `migrate` waits a bounded time for its lock and names the holder.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut m)
        .await
        .unwrap();
    let limits = orgkeeper::db::MigrateLimits {
        lock_wait: std::time::Duration::from_millis(500),
        ddl_lock_timeout: std::time::Duration::from_millis(200),
        ddl_attempts: 2,
    };
    let err = orgkeeper::db::migrate_with(&db.url, limits)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("pid {pid} (role {}", login.name)),
        "{err}"
    );
    assert!(err.contains("SELECT pg_terminate_backend(<pid>)"), "{err}");
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut m)
        .await
        .unwrap();

    // An idle application transaction holding a table: re-applying the
    // library gives up after short lock waits instead of queueing everyone
    // behind its ACCESS EXCLUSIVE locks, and says who holds the table.
    sqlx::query("DELETE FROM orgkeeper.sql_library")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut m).await.unwrap();
    sqlx::query("SELECT count(*) FROM orgkeeper.org")
        .execute(&mut m)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let url = db.url.clone();
    let migrating = tokio::spawn(async move { orgkeeper::db::migrate_with(&url, limits).await });
    // Meanwhile a tenant's query waits at most one short lock wait.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut tenant = db.connect().await;
    sqlx::query("SET statement_timeout = '1500ms'")
        .execute(&mut tenant)
        .await
        .unwrap();
    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org")
        .fetch_one(&mut tenant)
        .await
        .expect("a tenant's query is not queued behind migrate for long");
    assert_eq!(orgs, 1, "Vic's personal organization");
    let err = format!("{:#}", migrating.await.unwrap().unwrap_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("migrate could not lock orgkeeper's tables within 200 ms in 2 attempts"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "pid {pid} (role {}, idle in transaction",
            login.name
        )),
        "{err}"
    );
    sqlx::query("ROLLBACK").execute(&mut m).await.unwrap();
    let report = orgkeeper::db::migrate_with(&db.url, limits).await.unwrap();
    assert!(report.library_applied);
}

// ---------------------------------------------------------------------------
// 9. hardening
// ---------------------------------------------------------------------------

#[tokio::test]
async fn item9_an_admin_cannot_redirect_members_keys_and_definer_functions_run_without_superuser_powers(
) {
    let db = TestDb::migrated().await;
    let olive = user(&db, "olive@acme.test").await;
    let adam = user(&db, "adam@acme.test").await;
    let acme = team(&db, "Acme", olive).await;
    trusted_add(&db, olive, acme, adam, "admin").await;
    let before = state(&db.pool).await;

    // Adam, an admin, points the organization at his own proxy.
    let mut a = app(&db, Some(adam)).await;
    refused(
        call(
            &mut a,
            "UPDATE orgkeeper.org SET llm_base_url = 'https://llm.evil.test' WHERE id = $1",
            &[acme],
        )
        .await,
        "42501",
        &[&format!(
            "user {adam} (role admin) cannot change llm_base_url of organization \"Acme\": only its owners can"
        )],
    );
    assert_eq!(state(&db.pool).await, before, "nothing changed");
    // Other settings are his to change; the owner changes the URL.
    call(
        &mut a,
        "UPDATE orgkeeper.org SET agent = 'CodeActAgent' WHERE id = $1",
        &[acme],
    )
    .await
    .unwrap();
    let mut o = app(&db, Some(olive)).await;
    call(
        &mut o,
        "UPDATE orgkeeper.org SET llm_base_url = 'https://llm.acme.test' WHERE id = $1",
        &[acme],
    )
    .await
    .unwrap();

    // Every SECURITY DEFINER function (but the DBA-only ANALYZE helper) is
    // owned by a role that is neither superuser nor BYPASSRLS nor the
    // tables' owner.
    let owners: Vec<(String, String, bool, bool, bool)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, r.rolname::text, r.rolsuper, r.rolbypassrls,
                r.oid = (SELECT c.relowner FROM pg_class c WHERE c.oid = 'orgkeeper.org'::regclass)
           FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
          WHERE p.pronamespace = 'orgkeeper'::regnamespace AND p.prosecdef ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(owners.len() > 30, "{owners:?}");
    for (function, owner, superuser, bypassrls, owns_tables) in owners {
        if function == "orgkeeper.refresh_growing_statistics()" {
            let app_may: bool = sqlx::query_scalar(
                "SELECT has_function_privilege('orgkeeper_app', 'orgkeeper.refresh_growing_statistics()', 'EXECUTE')",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            assert!(!app_may);
            continue;
        }
        assert_eq!(owner, "orgkeeper_definer", "{function}");
        assert!(!superuser && !bypassrls && !owns_tables, "{function}");
    }
}

#[tokio::test]
async fn item7_an_app_session_holding_the_wakeup_key_blocks_no_insert_and_loses_no_wakeup() {
    let db = TestDb::migrated().await;
    let login = LoginRole::create(&db, "ok_app", "orgkeeper_app").await;
    let ann = user(&db, "ann@acme.test").await;

    // Mallory (any application login) holds the outbox's wake-up key ("okwake", sql/outbox.sql)
    // exclusively, for as long as she likes.
    let mut m = login.connect().await;
    sqlx::query("SELECT pg_advisory_lock(121398893359973)")
        .execute(&mut m)
        .await
        .unwrap();

    // A daemon is waiting for work and listening.
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("orgkeeper_actions").await.unwrap();
    sqlx::query("SELECT orgkeeper.daemon_waits('waiting-daemon', interval '1 minute')")
        .execute(&db.pool)
        .await
        .unwrap();

    // Another tenant creates an organization: it is not blocked ...
    let mut a = app(&db, Some(ann)).await;
    sqlx::query("SET statement_timeout = '3s'")
        .execute(&mut a)
        .await
        .unwrap();
    let org: Uuid = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Acme', $1) RETURNING id",
    )
    .bind(ann)
    .fetch_one(&mut a)
    .await
    .expect("an insert is not blocked by a session holding the wake-up key");
    // ... and the waiting daemon hears of its provisioning action.
    let note = tokio::time::timeout(std::time::Duration::from_secs(3), listener.recv())
        .await
        .expect("a notification while the key is held")
        .unwrap();
    let action: i64 = sqlx::query_scalar(
        "SELECT id FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'litellm.provision_org'",
    )
    .bind(org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(note.payload()).unwrap()["ids"],
        serde_json::json!([action])
    );
}

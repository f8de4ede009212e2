//! Stories about managing organizations through the SQL functions: renaming,
//! deleting, transferring ownership, members and their ranks, invitations,
//! and the outbox actions member changes enqueue. Every refusal is asserted
//! with its SQLSTATE, its message and the presence of a hint, and that it
//! changed nothing.

use crate::support::{app, assert_refusal, db_error, personal, refused, state, team, user, TestDb};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

async fn rename(pool: &PgPool, actor: Uuid, org: Uuid, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.rename_org($1, $2, $3)")
        .bind(actor)
        .bind(org)
        .bind(name)
        .execute(pool)
        .await
        .map(drop)
}

async fn delete(pool: &PgPool, actor: Uuid, org: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
        .bind(actor)
        .bind(org)
        .execute(pool)
        .await
        .map(drop)
}

async fn transfer(pool: &PgPool, actor: Uuid, org: Uuid, to: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.transfer_ownership($1, $2, $3)")
        .bind(actor)
        .bind(org)
        .bind(to)
        .execute(pool)
        .await
        .map(drop)
}

async fn add(
    pool: &PgPool,
    actor: Uuid,
    org: Uuid,
    who: Uuid,
    role: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, $4)")
        .bind(actor)
        .bind(org)
        .bind(who)
        .bind(role)
        .execute(pool)
        .await
        .map(drop)
}

async fn set_role(
    pool: &PgPool,
    actor: Uuid,
    org: Uuid,
    who: Uuid,
    role: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.change_member_role($1, $2, $3, $4)")
        .bind(actor)
        .bind(org)
        .bind(who)
        .bind(role)
        .execute(pool)
        .await
        .map(drop)
}

async fn remove(pool: &PgPool, actor: Uuid, org: Uuid, who: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.remove_member($1, $2, $3)")
        .bind(actor)
        .bind(org)
        .bind(who)
        .execute(pool)
        .await
        .map(drop)
}

async fn leave(pool: &PgPool, actor: Uuid, org: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.leave_org($1, $2)")
        .bind(actor)
        .bind(org)
        .execute(pool)
        .await
        .map(drop)
}

async fn invite(
    pool: &PgPool,
    actor: Uuid,
    org: Uuid,
    email: &str,
    role: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT orgkeeper.create_invitation($1, $2, $3, $4)")
        .bind(actor)
        .bind(org)
        .bind(email)
        .bind(role)
        .fetch_one(pool)
        .await
}

async fn accept<'c, E>(executor: E, who: Uuid, token: &str) -> Result<Uuid, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_scalar("SELECT orgkeeper.accept_invitation($1, $2)")
        .bind(who)
        .bind(token)
        .fetch_one(executor)
        .await
}

async fn revoke(pool: &PgPool, actor: Uuid, token: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT orgkeeper.revoke_invitation($1, $2)")
        .bind(actor)
        .bind(token)
        .execute(pool)
        .await
        .map(drop)
}

async fn role_of(db: &TestDb, org: Uuid, who: Uuid) -> Option<String> {
    sqlx::query_scalar(
        "SELECT r.name FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
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

/// (kind, user_id, payload) of the member actions enqueued for an org, in order.
async fn member_actions(db: &TestDb, org: Uuid) -> Vec<(String, Uuid, serde_json::Value)> {
    sqlx::query_as(
        "SELECT kind, user_id, payload FROM orgkeeper.pending_external_actions
          WHERE org_id = $1 AND kind IN ('litellm.add_member', 'litellm.remove_member') ORDER BY id",
    )
    .bind(org)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// An organization with an owner, an admin and a member (each with a personal org).
struct Team {
    org: Uuid,
    owner: Uuid,
    admin: Uuid,
    member: Uuid,
}

async fn acme(db: &TestDb) -> Team {
    let owner = user(db, "olive@acme.test").await;
    let admin = user(db, "adam@acme.test").await;
    let member = user(db, "mia@acme.test").await;
    for u in [owner, admin, member] {
        personal(db, u).await;
    }
    let org = team(db, "Acme", owner).await;
    add(&db.pool, owner, org, admin, "admin").await.unwrap();
    add(&db.pool, owner, org, member, "member").await.unwrap();
    Team {
        org,
        owner,
        admin,
        member,
    }
}

// ---------------------------------------------------------------------------
// rename
// ---------------------------------------------------------------------------

#[tokio::test]
async fn owners_and_admins_rename_members_cannot() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;

    rename(&db.pool, t.owner, t.org, "Acme Corp").await.unwrap();
    rename(&db.pool, t.admin, t.org, "  Acme Inc  ")
        .await
        .unwrap();
    let name: String = sqlx::query_scalar("SELECT name FROM orgkeeper.org WHERE id = $1")
        .bind(t.org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(name, "Acme Inc", "trimmed by the name rules");

    let stranger = user(&db, "sam@else.test").await;
    let before = state(&db.pool).await;
    refused(
        rename(&db.pool, t.member, t.org, "Mine").await,
        "42501",
        &[
            &t.member.to_string(),
            "role member",
            "\"Acme Inc\"",
            "only owners and admins",
        ],
    );
    let hint = refused(
        rename(&db.pool, stranger, t.org, "Mine").await,
        "42501",
        &["is not a member of organization", &t.org.to_string()],
    );
    assert!(hint.contains("ask one of its owners"));
    assert_eq!(state(&db.pool).await, before, "refusals change nothing");
}

#[tokio::test]
async fn renaming_follows_the_name_rules_and_refuses_unknown_orgs_and_nulls() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    team(&db, "Globex", t.owner).await;
    let before = state(&db.pool).await;

    refused(
        rename(&db.pool, t.owner, t.org, "GLOBEX").await,
        "23505",
        &["\"Globex\" already exists"],
    );
    let err = rename(&db.pool, t.owner, t.org, "   ").await.unwrap_err();
    assert_refusal(&err, "23514", &[]);
    let unknown = Uuid::new_v4();
    refused(
        rename(&db.pool, t.owner, unknown, "X").await,
        "P0002",
        &[&format!("organization {unknown} does not exist")],
    );
    refused(
        sqlx::query("SELECT orgkeeper.rename_org($1, $2, NULL)")
            .bind(t.owner)
            .bind(t.org)
            .execute(&db.pool)
            .await,
        "22004",
        &["rename_org: new_name is NULL"],
    );
    refused(
        sqlx::query("SELECT orgkeeper.rename_org(NULL, $1, 'X')")
            .bind(t.org)
            .execute(&db.pool)
            .await,
        "22004",
        &["rename_org: the acting user is NULL"],
    );
    assert_eq!(state(&db.pool).await, before);
}

// ---------------------------------------------------------------------------
// delete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn only_owners_delete_and_never_a_personal_org() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let before = state(&db.pool).await;

    refused(
        delete(&db.pool, t.admin, t.org).await,
        "42501",
        &["role admin", "\"Acme\"", "only its owners can delete it"],
    );
    refused(
        delete(&db.pool, t.member, t.org).await,
        "42501",
        &["role member", "only its owners"],
    );
    let hint = refused(
        delete(&db.pool, t.owner, t.owner).await,
        "23514",
        &[
            "personal organization of user",
            &t.owner.to_string(),
            "cannot be deleted",
        ],
    );
    assert!(hint.contains("team organizations"));
    assert_eq!(state(&db.pool).await, before);
}

#[tokio::test]
async fn a_users_last_organization_cannot_be_deleted() {
    let db = TestDb::migrated().await;
    // No personal org: Acme is all the owner has.
    let owner = user(&db, "solo@acme.test").await;
    let org = team(&db, "Solo", owner).await;
    let before = state(&db.pool).await;
    let hint = refused(
        delete(&db.pool, owner, org).await,
        "23514",
        &[
            "\"Solo\" is the last organization of user",
            &owner.to_string(),
        ],
    );
    assert!(hint.contains("another organization"));
    assert_eq!(state(&db.pool).await, before);

    // With a second org of their own, the owner could delete it — but a member
    // for whom it is the last organization blocks it, named in the message.
    personal(&db, owner).await;
    let member = user(&db, "only@acme.test").await;
    add(&db.pool, owner, org, member, "member").await.unwrap();
    let hint = refused(
        delete(&db.pool, owner, org).await,
        "23514",
        &["last organization of 1 member(s)", &member.to_string()],
    );
    assert!(hint.contains("remove those members first"));
    assert!(role_of(&db, org, member).await.is_some());

    remove(&db.pool, owner, org, member).await.unwrap();
    delete(&db.pool, owner, org).await.unwrap();
}

#[tokio::test]
async fn deleting_an_org_detaches_billing_deletes_its_data_and_moves_current_users() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let other = team(&db, "Other", t.owner).await;
    // Everyone works in Acme right now.
    sqlx::query("UPDATE orgkeeper.users SET current_org_id = $1 WHERE id = ANY($2)")
        .bind(t.org)
        .bind(vec![t.owner, t.admin, t.member])
        .execute(&db.pool)
        .await
        .unwrap();
    invite(&db.pool, t.owner, t.org, "new@acme.test", "member")
        .await
        .unwrap();
    for (table, extra_cols, extra_vals) in [
        ("stripe_customers", ", stripe_customer_id", ", 'cus_1'"),
        ("billing_sessions", ", status", ", 'completed'"),
        ("api_keys", ", name", ", 'k'"),
        ("custom_secrets", ", secret_name", ", 's'"),
        ("slack_users", ", slack_user_id", ", 'U1'"),
        ("slack_conversation", ", channel_id", ", 'C1'"),
        ("user_repos", ", repo_id", ", 'r1'"),
        ("gitlab_webhook", ", group_id", ", 'g1'"),
        (
            "conversation_metadata_saas",
            ", conversation_id",
            ", 'conv-1'",
        ),
    ] {
        for org in [t.org, other] {
            let sql = format!(
                "INSERT INTO orgkeeper.{table} (user_id, org_id{extra_cols}) VALUES ($1, $2{})",
                if table == "conversation_metadata_saas" {
                    ", gen_random_uuid()::text"
                } else {
                    extra_vals
                }
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(t.owner)
                .bind(org)
                .execute(&db.pool)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
        }
    }

    delete(&db.pool, t.owner, t.org).await.unwrap();

    // Deletion in the open: the org is deprovisioning until the daemon has
    // deleted its team; what follows is done at once.
    let status: String =
        sqlx::query_scalar("SELECT provisioning_status FROM orgkeeper.org WHERE id = $1")
            .bind(t.org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "deprovisioning");
    for table in ["stripe_customers", "billing_sessions"] {
        let (detached, still): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE org_id IS NULL), count(*) FILTER (WHERE org_id = $1) FROM orgkeeper.{table}"
        )))
        .bind(other)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!((detached, still), (1, 1), "{table}: kept, detached");
    }
    for table in [
        "api_keys",
        "custom_secrets",
        "slack_users",
        "slack_conversation",
        "user_repos",
        "gitlab_webhook",
        "conversation_metadata_saas",
    ] {
        let (total, other_rows): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE org_id = $1) FROM orgkeeper.{table}"
        )))
        .bind(other)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            (total, other_rows),
            (1, 1),
            "{table}: the deleted org's row is gone, the other org's stays"
        );
    }
    let leftovers = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1)
                  + (SELECT count(*) FROM orgkeeper.invitation WHERE org_id = $1)",
        )
        .bind(t.org)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(
        leftovers().await,
        4,
        "memberships and invitations stay until the row goes"
    );
    for u in [t.owner, t.admin, t.member] {
        assert_eq!(
            current_org(&db, u).await,
            Some(u),
            "moved to the personal org"
        );
    }
    let (action, payload): (i64, serde_json::Value) = sqlx::query_as(
        "SELECT id, payload FROM orgkeeper.pending_external_actions WHERE org_id = $1 AND kind = 'litellm.deprovision_org'",
    )
    .bind(t.org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(payload["rows"]["stripe_customers_detached"], 1, "{payload}");
    assert_eq!(payload["rows"]["api_keys"], 1, "{payload}");
    assert_eq!(payload["requested_by"], t.owner.to_string(), "{payload}");
    let per_member: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions
          WHERE org_id = $1 AND kind IN ('litellm.delete_team', 'litellm.remove_member')",
    )
    .bind(t.org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        per_member, 0,
        "the team's deletion covers the members' keys"
    );

    // The daemon's write-back once the team is deleted (its own story is in
    // tests/org_deletion.rs): tombstone, row gone, memberships and
    // invitations with it.
    sqlx::query(
        "UPDATE orgkeeper.pending_external_actions SET status = 'cancelled', finished_at = now()
          WHERE org_id = $1 AND id < $2",
    )
    .bind(t.org)
    .bind(action)
    .execute(&db.pool)
    .await
    .unwrap();
    let lease: String = sqlx::query_scalar(
        "SELECT locked_by FROM orgkeeper.claim_actions('test', 1000, '1 minute') WHERE id = $1",
    )
    .bind(action)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let recorded: String = sqlx::query_scalar(
        "SELECT orgkeeper.record_org_deleted($1, $2, '{\"team_deleted\": true}')",
    )
    .bind(action)
    .bind(&lease)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded, "done");
    assert_eq!(
        leftovers().await,
        0,
        "memberships and invitations go with it"
    );
    let (name, cleanup): (String, serde_json::Value) =
        sqlx::query_as("SELECT name, cleanup FROM orgkeeper.org_deleted WHERE id = $1")
            .bind(t.org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(name, "Acme");
    assert_eq!(cleanup["rows"], payload["rows"], "{cleanup}");
}

// ---------------------------------------------------------------------------
// transfer ownership
// ---------------------------------------------------------------------------

#[tokio::test]
async fn transfer_swaps_roles_unless_the_owner_asks_to_keep_another_as_the_application() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let transfer_as = |actor: Uuid, to: Uuid, keep_as: Option<&'static str>| {
        let db = &db;
        async move {
            let mut conn = app(db, Some(actor)).await;
            sqlx::query("SELECT orgkeeper.transfer_ownership($1, $2, $3, $4)")
                .bind(actor)
                .bind(t.org)
                .bind(to)
                .bind(keep_as)
                .execute(&mut conn)
                .await
                .map(drop)
        }
    };

    // Olive (owner) hands Acme to Mia (member): they swap roles.
    transfer_as(t.owner, t.member, None).await.unwrap();
    assert_eq!(
        role_of(&db, t.org, t.member).await.as_deref(),
        Some("owner")
    );
    assert_eq!(
        role_of(&db, t.org, t.owner).await.as_deref(),
        Some("member")
    );
    assert_eq!(role_of(&db, t.org, t.admin).await.as_deref(), Some("admin"));

    // A role that does not exist: refused, nothing changed.
    let before = state(&db.pool).await;
    let hint = refused(
        transfer_as(t.member, t.admin, Some("superuser")).await,
        "22023",
        &[
            "the acting owner cannot keep role \"superuser\": no such role",
            "organization \"Acme\"",
        ],
    );
    assert!(hint.contains("owner, admin, member"), "{hint}");
    assert!(hint.contains("nothing was changed"), "{hint}");
    assert_eq!(state(&db.pool).await, before);
    // Whatever keep_as says, the other rules still apply first.
    refused(
        transfer_as(t.member, t.member, Some("admin")).await,
        "22023",
        &["already owns organization \"Acme\""],
    );
    assert_eq!(state(&db.pool).await, before);

    // Mia hands it to Adam (admin) but stays admin herself, as she asks ...
    transfer_as(t.member, t.admin, Some("Admin")).await.unwrap();
    assert_eq!(role_of(&db, t.org, t.admin).await.as_deref(), Some("owner"));
    assert_eq!(
        role_of(&db, t.org, t.member).await.as_deref(),
        Some("admin")
    );
    // ... and Adam hands it back to Olive (member) keeping ownership: two owners.
    transfer_as(t.admin, t.owner, Some("owner")).await.unwrap();
    assert_eq!(role_of(&db, t.org, t.owner).await.as_deref(), Some("owner"));
    assert_eq!(role_of(&db, t.org, t.admin).await.as_deref(), Some("owner"));
    assert_eq!(
        role_of(&db, t.org, t.member).await.as_deref(),
        Some("admin")
    );
}

#[tokio::test]
async fn ownership_goes_to_an_active_member_and_the_old_owner_becomes_admin() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let stranger = user(&db, "sam@else.test").await;
    let before = state(&db.pool).await;
    let hint = refused(
        transfer(&db.pool, t.owner, t.org, stranger).await,
        "P0002",
        &[
            &stranger.to_string(),
            "is not a member of organization \"Acme\"",
        ],
    );
    assert!(hint.contains("add them first"));
    refused(
        transfer(&db.pool, t.admin, t.org, t.member).await,
        "42501",
        &["role admin", "only an owner can transfer"],
    );
    refused(
        transfer(&db.pool, t.owner, t.org, t.owner).await,
        "22023",
        &["already owns organization \"Acme\""],
    );
    refused(
        sqlx::query("SELECT orgkeeper.transfer_ownership($1, $2, NULL)")
            .bind(t.owner)
            .bind(t.org)
            .execute(&db.pool)
            .await,
        "22004",
        &["new_owner is NULL"],
    );
    assert_eq!(state(&db.pool).await, before);
    sqlx::query(
        "UPDATE orgkeeper.org_member SET status = 'disabled' WHERE org_id = $1 AND user_id = $2",
    )
    .bind(t.org)
    .bind(t.member)
    .execute(&db.pool)
    .await
    .unwrap();
    let before_disabled = state(&db.pool).await;
    refused(
        transfer(&db.pool, t.owner, t.org, t.member).await,
        "55000",
        &["membership in organization \"Acme\" is disabled"],
    );
    assert_eq!(state(&db.pool).await, before_disabled);

    transfer(&db.pool, t.owner, t.org, t.admin).await.unwrap();
    assert_eq!(role_of(&db, t.org, t.admin).await.as_deref(), Some("owner"));
    assert_eq!(role_of(&db, t.org, t.owner).await.as_deref(), Some("admin"));
    // The former owner is now outranked by the new one.
    refused(
        remove(&db.pool, t.owner, t.org, t.admin).await,
        "42501",
        &["who outranks them"],
    );
}

// ---------------------------------------------------------------------------
// members and ranks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_member_cannot_promote_themselves_nor_manage_anyone() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let newcomer = Uuid::new_v4();
    let before = state(&db.pool).await;

    let hint = refused(
        set_role(&db.pool, t.member, t.org, t.member, "admin").await,
        "42501",
        &[
            &t.member.to_string(),
            "has role member in organization \"Acme\"",
            "only owners and admins",
        ],
    );
    assert!(hint.contains("ask an owner or admin of \"Acme\""));
    refused(
        add(&db.pool, t.member, t.org, newcomer, "member").await,
        "42501",
        &["only owners and admins can add members"],
    );
    refused(
        remove(&db.pool, t.member, t.org, t.admin).await,
        "42501",
        &["only owners and admins can remove members"],
    );
    refused(
        invite(&db.pool, t.member, t.org, "x@acme.test", "member").await,
        "42501",
        &["only owners and admins can invite"],
    );
    assert_eq!(state(&db.pool).await, before);
}

#[tokio::test]
async fn an_admin_cannot_touch_the_owner_nor_grant_ownership() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let before = state(&db.pool).await;

    let hint = refused(
        remove(&db.pool, t.admin, t.org, t.owner).await,
        "42501",
        &[
            &format!(
                "user {} (role admin) cannot remove user {} (role owner)",
                t.admin, t.owner
            ),
            "who outranks them",
        ],
    );
    assert!(hint.contains("ask an owner"));
    refused(
        set_role(&db.pool, t.admin, t.org, t.owner, "member").await,
        "42501",
        &["cannot change the role of user", "(role owner)"],
    );
    refused(
        set_role(&db.pool, t.admin, t.org, t.admin, "owner").await,
        "42501",
        &["cannot grant role owner in organization \"Acme\": it outranks their own"],
    );
    refused(
        add(&db.pool, t.admin, t.org, Uuid::new_v4(), "owner").await,
        "42501",
        &["cannot grant role owner"],
    );
    refused(
        invite(&db.pool, t.admin, t.org, "boss@acme.test", "owner").await,
        "42501",
        &["cannot grant role owner"],
    );
    assert_eq!(state(&db.pool).await, before);

    // What an admin may do: add and manage members and admins.
    let newcomer = user(&db, "nora@acme.test").await;
    add(&db.pool, t.admin, t.org, newcomer, "admin")
        .await
        .unwrap();
    set_role(&db.pool, t.admin, t.org, newcomer, "member")
        .await
        .unwrap();
    remove(&db.pool, t.admin, t.org, newcomer).await.unwrap();
    assert_eq!(role_of(&db, t.org, newcomer).await, None);
}

#[tokio::test]
async fn unknown_roles_duplicates_and_non_members_are_refused() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let before = state(&db.pool).await;

    let hint = refused(
        add(&db.pool, t.owner, t.org, Uuid::new_v4(), "superuser").await,
        "22023",
        &["role \"superuser\" does not exist"],
    );
    assert!(hint.contains("owner, admin, member"));
    let hint = refused(
        add(&db.pool, t.owner, t.org, t.member, "member").await,
        "23505",
        &[
            &t.member.to_string(),
            "already a member of organization \"Acme\" (role member)",
        ],
    );
    assert!(hint.contains("change_member_role"));
    let stranger = Uuid::new_v4();
    refused(
        set_role(&db.pool, t.owner, t.org, stranger, "admin").await,
        "P0002",
        &[&format!(
            "user {stranger} is not a member of organization \"Acme\""
        )],
    );
    refused(
        remove(&db.pool, t.owner, t.org, stranger).await,
        "P0002",
        &["is not a member"],
    );
    refused(
        leave(&db.pool, stranger, t.org).await,
        "P0002",
        &["is not a member"],
    );
    refused(
        add(&db.pool, t.owner, Uuid::new_v4(), stranger, "member").await,
        "P0002",
        &["does not exist"],
    );
    refused(
        sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, NULL)")
            .bind(t.owner)
            .bind(t.org)
            .bind(stranger)
            .execute(&db.pool)
            .await,
        "22004",
        &["add_member: role is NULL"],
    );
    assert_eq!(state(&db.pool).await, before);
}

#[tokio::test]
async fn the_last_owner_cannot_leave_be_demoted_or_removed() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let before = state(&db.pool).await;

    let hint = refused(
        leave(&db.pool, t.owner, t.org).await,
        "23514",
        &[
            &t.owner.to_string(),
            "is the last owner of organization \"Acme\" and cannot leave it",
        ],
    );
    assert!(hint.contains("transfer ownership first"));
    refused(
        set_role(&db.pool, t.owner, t.org, t.owner, "admin").await,
        "23514",
        &["last owner", "cannot be demoted to admin"],
    );
    refused(
        remove(&db.pool, t.owner, t.org, t.owner).await,
        "23514",
        &["last owner"],
    );
    assert_eq!(state(&db.pool).await, before);

    // With a second owner, the first may step down and then leave.
    set_role(&db.pool, t.owner, t.org, t.admin, "owner")
        .await
        .unwrap();
    set_role(&db.pool, t.owner, t.org, t.owner, "member")
        .await
        .unwrap();
    leave(&db.pool, t.owner, t.org).await.unwrap();
    assert_eq!(role_of(&db, t.org, t.owner).await, None);
    assert_eq!(role_of(&db, t.org, t.admin).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn member_changes_enqueue_litellm_actions() {
    let db = TestDb::migrated().await;
    let owner = user(&db, "olive@acme.test").await;
    let org = team(&db, "Acme", owner).await;
    let (a, b) = (
        user(&db, "a@acme.test").await,
        user(&db, "b@acme.test").await,
    );

    add(&db.pool, owner, org, a, "member").await.unwrap();
    add(&db.pool, owner, org, b, "admin").await.unwrap();
    set_role(&db.pool, owner, org, b, "member").await.unwrap(); // no action for a role change
    remove(&db.pool, owner, org, a).await.unwrap();
    leave(&db.pool, b, org).await.unwrap();

    let team_id = serde_json::json!(org.to_string());
    let expected: Vec<(String, Uuid, serde_json::Value)> = vec![
        (
            "litellm.add_member".into(),
            a,
            serde_json::json!({"user_id": a, "team_id": team_id}),
        ),
        (
            "litellm.add_member".into(),
            b,
            serde_json::json!({"user_id": b, "team_id": team_id}),
        ),
        (
            "litellm.remove_member".into(),
            a,
            serde_json::json!({"user_id": a, "team_id": team_id}),
        ),
        (
            "litellm.remove_member".into(),
            b,
            serde_json::json!({"user_id": b, "team_id": team_id}),
        ),
    ];
    assert_eq!(member_actions(&db, org).await, expected);
    // A new member's first org becomes current; leaving moves them off it.
    assert_eq!(current_org(&db, a).await, None);
}

#[tokio::test]
async fn a_removed_member_loses_their_api_keys_and_current_org() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    sqlx::query("UPDATE orgkeeper.users SET current_org_id = $1 WHERE id = $2")
        .bind(t.org)
        .bind(t.member)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.api_keys (user_id, org_id, name) VALUES ($1, $2, 'mine'), ($1, $1, 'personal')")
        .bind(t.member)
        .bind(t.org)
        .execute(&db.pool)
        .await
        .unwrap();

    remove(&db.pool, t.admin, t.org, t.member).await.unwrap();

    let keys: Vec<String> =
        sqlx::query_scalar("SELECT name FROM orgkeeper.api_keys WHERE user_id = $1 ORDER BY name")
            .bind(t.member)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(keys, vec!["personal".to_string()]);
    assert_eq!(current_org(&db, t.member).await, Some(t.member));
}

// ---------------------------------------------------------------------------
// the acting user
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_application_cannot_act_for_another_user() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let before = state(&db.pool).await;
    let mut conn = db.connect().await;
    sqlx::query("SET ROLE orgkeeper_app")
        .execute(&mut conn)
        .await
        .unwrap();

    // Without naming its user, the application may not act at all.
    let err = sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(t.owner)
        .bind(t.org)
        .bind(Uuid::new_v4())
        .execute(&mut conn)
        .await;
    let hint = refused(
        err,
        "42501",
        &["add_member: role orgkeeper_app must name its user in orgkeeper.user_id"],
    );
    assert!(hint.contains("SET LOCAL orgkeeper.user_id"));

    // Naming the member but acting as the owner is impersonation.
    sqlx::query("SELECT set_config('orgkeeper.user_id', $1, false)")
        .bind(t.member.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let err = sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(t.owner)
        .bind(t.org)
        .bind(Uuid::new_v4())
        .execute(&mut conn)
        .await;
    refused(
        err,
        "42501",
        &[&format!("user {} cannot act as user {}", t.member, t.owner)],
    );
    let err = sqlx::query("SELECT orgkeeper.accept_invitation($1, 'okinv_x')")
        .bind(t.owner)
        .execute(&mut conn)
        .await;
    refused(err, "42501", &["cannot act as user"]);
    assert_eq!(state(&db.pool).await, before);
}

// ---------------------------------------------------------------------------
// invitations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_invitation_is_accepted_once_and_writes_the_membership() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let ada = user(&db, "Ada@Example.test").await;

    let token = invite(&db.pool, t.admin, t.org, "ada@example.TEST", "admin")
        .await
        .unwrap();
    assert!(
        token.starts_with("okinv_") && token.len() == 6 + 64,
        "{token}"
    );
    let (stored, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE position(convert_to($1, 'UTF8') IN token_hash) > 0
                                            OR t::text LIKE '%' || $1 || '%')
           FROM orgkeeper.invitation t",
    )
    .bind(&token)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((stored, plain), (1, 0), "only the hash is stored");
    let hashed: bool = sqlx::query_scalar(
        "SELECT token_hash = sha256(convert_to($1, 'UTF8')) FROM orgkeeper.invitation",
    )
    .bind(&token)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(hashed);

    let org = accept(&db.pool, ada, &token).await.unwrap();
    assert_eq!(org, t.org);
    assert_eq!(role_of(&db, t.org, ada).await.as_deref(), Some("admin"));
    assert_eq!(current_org(&db, ada).await, Some(t.org));
    let actions = member_actions(&db, t.org).await;
    assert_eq!(
        actions.last().unwrap(),
        &(
            "litellm.add_member".to_string(),
            ada,
            serde_json::json!({"user_id": ada, "team_id": t.org.to_string()})
        )
    );

    let someone = user(&db, "ada@example.test").await;
    let before = state(&db.pool).await;
    let hint = refused(
        accept(&db.pool, ada, &token).await,
        "55000",
        &[&format!(
            "user {ada} already accepted the invitation to organization \"Acme\""
        )],
    );
    assert!(hint.contains("used once"));
    refused(
        accept(&db.pool, someone, &token).await,
        "55000",
        &["invitation to organization \"Acme\" has already been used"],
    );
    assert_eq!(
        state(&db.pool).await,
        before,
        "no second membership, nothing changed"
    );

    let listed: Vec<(String, String, String)> =
        sqlx::query_as("SELECT email, role, status FROM orgkeeper.list_invitations($1, $2)")
            .bind(t.owner)
            .bind(t.org)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        listed,
        vec![("ada@example.TEST".into(), "admin".into(), "accepted".into())]
    );
}

#[tokio::test]
async fn expired_revoked_wrong_email_and_unknown_invitations_are_refused() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let bob = user(&db, "bob@example.test").await;

    // Expired.
    let expired = invite(&db.pool, t.owner, t.org, "bob@example.test", "member")
        .await
        .unwrap();
    sqlx::query("UPDATE orgkeeper.invitation SET expires_at = now() - interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    let before = state(&db.pool).await;
    let hint = refused(
        accept(&db.pool, bob, &expired).await,
        "55000",
        &["the invitation to organization \"Acme\" expired at"],
    );
    assert!(hint.contains("new invitation"));
    assert_eq!(state(&db.pool).await, before);

    // Re-inviting replaces the open invitation: the old token stops working.
    let fresh = invite(&db.pool, t.owner, t.org, "bob@example.test", "member")
        .await
        .unwrap();
    refused(
        accept(&db.pool, bob, &expired).await,
        "55000",
        &["was revoked at"],
    );

    // Revoked.
    revoke(&db.pool, t.admin, &fresh).await.unwrap();
    let before = state(&db.pool).await;
    refused(
        accept(&db.pool, bob, &fresh).await,
        "55000",
        &["the invitation to organization \"Acme\" was revoked at"],
    );
    refused(
        revoke(&db.pool, t.admin, &fresh).await,
        "55000",
        &["bob@example.test", "already revoked"],
    );
    assert_eq!(state(&db.pool).await, before);

    // Wrong email.
    let carol = user(&db, "carol@example.test").await;
    let for_bob = invite(&db.pool, t.owner, t.org, "bob@example.test", "member")
        .await
        .unwrap();
    let before = state(&db.pool).await;
    let hint = refused(
        accept(&db.pool, carol, &for_bob).await,
        "42501",
        &[
            "the invitation to organization \"Acme\" was sent to another address",
            &carol.to_string(),
            "carol@example.test",
        ],
    );
    assert!(hint.contains("invited address"));
    // Unknown user, unknown token, NULL token.
    refused(
        accept(&db.pool, Uuid::new_v4(), &for_bob).await,
        "P0002",
        &["is not known to orgkeeper"],
    );
    refused(
        accept(&db.pool, bob, "okinv_0000").await,
        "P0002",
        &["accept_invitation: no invitation matches this token"],
    );
    refused(
        sqlx::query_scalar::<_, Uuid>("SELECT orgkeeper.accept_invitation($1, NULL)")
            .bind(bob)
            .fetch_one(&db.pool)
            .await,
        "22004",
        &["accept_invitation: token is NULL"],
    );
    assert_eq!(state(&db.pool).await, before);

    // The right person, finally.
    assert_eq!(accept(&db.pool, bob, &for_bob).await.unwrap(), t.org);
    refused(
        revoke(&db.pool, t.owner, &for_bob).await,
        "55000",
        &["already accepted", &bob.to_string()],
    );
}

#[tokio::test]
async fn invitation_arguments_and_inviters_are_checked() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let before = state(&db.pool).await;

    refused(
        invite(&db.pool, t.owner, t.org, "not-an-email", "member").await,
        "22023",
        &["'not-an-email' is not an email address"],
    );
    refused(
        invite(&db.pool, t.owner, t.org, "x@acme.test", "wizard").await,
        "22023",
        &["role \"wizard\" does not exist"],
    );
    refused(
        sqlx::query_scalar::<_, String>(
            "SELECT orgkeeper.create_invitation($1, $2, 'x@acme.test', 'member', interval '-1 day')",
        )
        .bind(t.owner)
        .bind(t.org)
        .fetch_one(&db.pool)
        .await,
        "22023",
        &["at most 90 days"],
    );
    refused(
        invite(&db.pool, t.owner, t.org, "MIA@acme.test", "member").await,
        "23505",
        &["MIA@acme.test", "already a member of organization \"Acme\""],
    );
    refused(
        sqlx::query("SELECT * FROM orgkeeper.list_invitations($1, $2)")
            .bind(t.member)
            .bind(t.org)
            .fetch_all(&db.pool)
            .await,
        "42501",
        &["only owners and admins can list its invitations"],
    );
    assert_eq!(state(&db.pool).await, before);

    // An admin cannot revoke an owner-level invitation.
    let for_owner = invite(&db.pool, t.owner, t.org, "co@acme.test", "owner")
        .await
        .unwrap();
    refused(
        revoke(&db.pool, t.admin, &for_owner).await,
        "42501",
        &["co@acme.test", "as owner, a role that outranks theirs"],
    );

    // An invitation is only as good as its inviter's authority today.
    let dan = user(&db, "dan@example.test").await;
    let from_admin = invite(&db.pool, t.admin, t.org, "dan@example.test", "member")
        .await
        .unwrap();
    set_role(&db.pool, t.owner, t.org, t.admin, "member")
        .await
        .unwrap();
    let before = state(&db.pool).await;
    refused(
        accept(&db.pool, dan, &from_admin).await,
        "55000",
        &["is no longer valid: its inviter", &t.admin.to_string()],
    );
    assert_eq!(state(&db.pool).await, before);

    // Revoking by id (admins never see tokens).
    let id: i64 = sqlx::query_scalar(
        "SELECT id FROM orgkeeper.list_invitations($1, $2) WHERE email = 'co@acme.test'",
    )
    .bind(t.owner)
    .bind(t.org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT orgkeeper.revoke_invitation_by_id($1, $2)")
        .bind(t.owner)
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "SELECT email, status FROM orgkeeper.list_invitations($1, $2) ORDER BY email",
    )
    .bind(t.owner)
    .bind(t.org)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        vec![
            ("co@acme.test".into(), "revoked".into()),
            ("dan@example.test".into(), "pending".into())
        ]
    );
}

#[tokio::test]
async fn two_concurrent_accepts_of_one_invitation_give_one_membership() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let eve = user(&db, "eve@example.test").await;
    let token = invite(&db.pool, t.owner, t.org, "eve@example.test", "member")
        .await
        .unwrap();

    // Deterministic interleaving: the first accept holds the invitation row
    // until it commits; the second waits for it, then sees it used.
    let mut first = db.connect().await;
    let mut second = db.connect().await;
    let mut tx = first.begin().await.unwrap();
    accept(&mut *tx, eve, &token).await.unwrap();
    let waiting = tokio::spawn({
        let token = token.clone();
        async move {
            let result = accept(&mut second, eve, &token).await;
            (result, second)
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second accept waits for the row lock"
    );
    tx.commit().await.unwrap();
    let (result, _second) = waiting.await.unwrap();
    refused(result, "55000", &["already accepted the invitation"]);

    // And truly at once, many times over: exactly one wins each time.
    for round in 0..5 {
        let who = user(&db, &format!("p{round}@example.test")).await;
        let token = invite(
            &db.pool,
            t.owner,
            t.org,
            &format!("p{round}@example.test"),
            "member",
        )
        .await
        .unwrap();
        let (a, b) = tokio::join!(accept(&db.pool, who, &token), accept(&db.pool, who, &token));
        assert_eq!(
            [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
            1,
            "round {round}: {a:?} {b:?}"
        );
        let loser = if a.is_ok() { b } else { a };
        assert_refusal(&loser.unwrap_err(), "55000", &[]);
    }

    let memberships: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.org_member WHERE org_id = $1 AND user_id = $2",
    )
    .bind(t.org)
    .bind(eve)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(memberships, 1);
    let adds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.add_member' AND user_id = $1",
    )
    .bind(eve)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(adds, 1, "one add_member action");
}

#[tokio::test]
async fn listings_show_a_users_orgs_and_an_orgs_members() {
    let db = TestDb::migrated().await;
    let t = acme(&db).await;
    let orgs: Vec<(String, String, String, bool)> =
        sqlx::query_as("SELECT name, kind, role, is_current FROM orgkeeper.list_orgs($1)")
            .bind(t.admin)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        orgs,
        vec![
            (
                format!("user_{}_org", t.admin),
                "personal".into(),
                "owner".into(),
                true
            ),
            ("Acme".into(), "team".into(), "admin".into(), false),
        ]
    );
    let members: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT user_id, role FROM orgkeeper.list_members($1, $2)")
            .bind(t.member)
            .bind(t.org)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        members,
        vec![
            (t.owner, "owner".into()),
            (t.admin, "admin".into()),
            (t.member, "member".into())
        ]
    );
    let stranger = Uuid::new_v4();
    refused(
        sqlx::query("SELECT * FROM orgkeeper.list_members($1, $2)")
            .bind(stranger)
            .bind(t.org)
            .fetch_all(&db.pool)
            .await,
        "42501",
        &["is not a member of organization"],
    );
}

// ---------------------------------------------------------------------------
// who may create an organization
// ---------------------------------------------------------------------------

/// The org-creation policy as (kind, value, added_by), for asserting it.
async fn policy(db: &TestDb) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT kind, value, added_by FROM orgkeeper.org_creation_policy ORDER BY kind, value",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn app_insert_org(db: &TestDb, who: Uuid, name: &str) -> Result<Uuid, sqlx::Error> {
    let mut conn = app(db, Some(who)).await;
    sqlx::query_scalar("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2) RETURNING id")
        .bind(name)
        .bind(who)
        .fetch_one(&mut conn)
        .await
}

#[tokio::test]
async fn the_creator_of_an_organization_must_exist() {
    let db = TestDb::migrated().await;
    let bystander = user(&db, "by@stander.test").await;
    personal(&db, bystander).await;
    let ghost = Uuid::new_v4();
    let before = state(&db.pool).await;
    // The application inserting for its user, who has no users row yet.
    let hint = refused(
        app_insert_org(&db, ghost, "Ghost Inc").await,
        "23503",
        &[&format!(
            "user {ghost} does not exist: insert the users row first"
        )],
    );
    assert!(hint.contains("INSERT INTO orgkeeper.users"), "{hint}");
    // A DBA through create_org, and a personal organization: the same.
    refused(
        sqlx::query("SELECT orgkeeper.create_org('Ghost Inc', $1)")
            .bind(ghost)
            .execute(&db.pool)
            .await,
        "23503",
        &[&format!(
            "user {ghost} does not exist: insert the users row first"
        )],
    );
    refused(
        sqlx::query("SELECT orgkeeper.create_personal_org($1)")
            .bind(ghost)
            .execute(&db.pool)
            .await,
        "23503",
        &[&format!("user {ghost} does not exist")],
    );
    assert_eq!(
        state(&db.pool).await,
        before,
        "no org, and no invented user"
    );

    // Asked for another user, the application learns nothing about whether
    // that user exists: the refusal is the same either way.
    let me = user(&db, "me@acme.test").await;
    let someone = user(&db, "someone@acme.test").await;
    let before = state(&db.pool).await;
    for other in [someone, Uuid::new_v4()] {
        let mut conn = app(&db, Some(me)).await;
        refused(
            sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ('Theirs', $1)")
                .bind(other)
                .execute(&mut conn)
                .await,
            "42501",
            &[&format!(
                "organization \"Theirs\" cannot be created for user {other}: the application creates organizations for its own user only"
            )],
        );
    }
    assert_eq!(state(&db.pool).await, before);

    // The application records its user first, then creates: one statement.
    let mut conn = app(&db, Some(ghost)).await;
    let org: Uuid = sqlx::query_scalar(
        "WITH u AS (INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'ghost@acme.test') RETURNING id)
         INSERT INTO orgkeeper.org (name, created_by) SELECT 'Ghost Inc', u.id FROM u RETURNING id",
    )
    .bind(ghost)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(role_of(&db, org, ghost).await.as_deref(), Some("owner"));
}

#[tokio::test]
async fn team_orgs_are_created_by_verified_allowed_emails_and_domains_only() {
    let db = TestDb::migrated().await;
    let ada = user(&db, "ada@allowed.test").await;
    let eve = user(&db, "eve@evil.test").await;
    let pia = user(&db, "Pia@Partner.test").await;
    let una = Uuid::new_v4(); // claims an allowed address the provider has not verified
    sqlx::query("INSERT INTO orgkeeper.users (id, email) VALUES ($1, 'una@allowed.test')")
        .bind(una)
        .execute(&db.pool)
        .await
        .unwrap();
    // Empty policy: everyone may.
    app_insert_org(&db, eve, "Eve Before").await.unwrap();

    for (kind, value) in [("domain", " Allowed.TEST "), ("email", "pia@partner.test")] {
        let added: bool = sqlx::query_scalar("SELECT orgkeeper.policy_allow($1, $2, 'a DBA')")
            .bind(kind)
            .bind(value)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(added);
    }
    assert_eq!(
        policy(&db).await,
        [
            ("domain".into(), "allowed.test".into(), "a DBA".into()),
            ("email".into(), "pia@partner.test".into(), "a DBA".into()),
        ]
    );

    // A disallowed domain, as the application inserts it: refused with a
    // message naming the domain and who grants access, and nothing else.
    let before = (state(&db.pool).await, policy(&db).await);
    let err = app_insert_org(&db, eve, "Evil Corp").await.unwrap_err();
    let message = assert_refusal(&err, "42501", &[&format!(
            "user {eve} may not create organization \"Evil Corp\": the email domain \"evil.test\" is not allowed to create organizations"
        )]);
    let hint = crate::support::hint(&err).unwrap_or_default();
    assert!(
        hint.contains("an operator or DBA of this deployment can grant access"),
        "{hint}"
    );
    for leak in ["allowed.test", "partner", "pia"] {
        assert!(
            !message.contains(leak) && !hint.contains(leak),
            "leaks {leak}: {message} / {hint}"
        );
    }
    // Through create_org, and by a DBA on Eve's behalf: the policy is about the owner.
    let mut conn = app(&db, Some(eve)).await;
    refused(
        sqlx::query("SELECT orgkeeper.create_org('Evil Corp', $1)")
            .bind(eve)
            .execute(&mut conn)
            .await,
        "42501",
        &["the email domain \"evil.test\" is not allowed"],
    );
    refused(
        sqlx::query("SELECT orgkeeper.create_org('Evil Corp', $1)")
            .bind(eve)
            .execute(&db.pool)
            .await,
        "42501",
        &["the email domain \"evil.test\" is not allowed"],
    );
    // An allowed address that is not verified counts for nothing.
    refused(
        app_insert_org(&db, una, "Una Ltd").await,
        "42501",
        &[&format!(
            "user {una} may not create organization \"Una Ltd\": organization creation is restricted to allowed email addresses and domains, and the user has no verified email address"
        )],
    );
    assert_eq!(
        (state(&db.pool).await, policy(&db).await),
        before,
        "nothing changed"
    );

    // An allowed email and an allowed domain: accepted.
    let p = app_insert_org(&db, pia, "Partner Co").await.unwrap();
    assert_eq!(role_of(&db, p, pia).await.as_deref(), Some("owner"));
    let a = app_insert_org(&db, ada, "Ada Labs").await.unwrap();
    assert_eq!(role_of(&db, a, ada).await.as_deref(), Some("owner"));

    // Personal organizations: not withheld by default (as OpenHands) ...
    let mut conn = app(&db, Some(eve)).await;
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(eve)
        .execute(&mut conn)
        .await
        .unwrap();
    // ... withheld when the deployment says so (as Agenta's signup org).
    sqlx::query(
        "INSERT INTO orgkeeper.deployment_setting (name, value, set_by) VALUES ('policy_applies_to_personal_orgs', 'on', 'a DBA')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let before = state(&db.pool).await;
    let mut conn = app(&db, Some(una)).await;
    refused(
        sqlx::query("SELECT orgkeeper.create_personal_org($1)")
            .bind(una)
            .execute(&mut conn)
            .await,
        "42501",
        &[&format!(
            "user {una} may not create a personal organization"
        )],
    );
    assert_eq!(state(&db.pool).await, before);
    let mut conn = app(&db, Some(ada)).await;
    sqlx::query("SELECT orgkeeper.create_personal_org($1)")
        .bind(ada)
        .execute(&mut conn)
        .await
        .unwrap();
    // The setting accepts on and off only.
    let err = sqlx::query("UPDATE orgkeeper.deployment_setting SET value = 'yes' WHERE name = 'policy_applies_to_personal_orgs'")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_refusal(&err, "23514", &[]);

    // The application can neither read nor write the policy.
    let mut conn = app(&db, Some(eve)).await;
    for sql in [
        "SELECT * FROM orgkeeper.org_creation_policy",
        "INSERT INTO orgkeeper.org_creation_policy (kind, value, added_by) VALUES ('domain', 'evil.test', 'eve')",
        "DELETE FROM orgkeeper.org_creation_policy",
        "SELECT orgkeeper.policy_allow('domain', 'evil.test', 'eve')",
        "SELECT orgkeeper.creation_policy_allows('eve@evil.test')",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{sql}: {err}");
    }
    assert_eq!(policy(&db).await.len(), 2);

    // Removing the last entry lets everyone create again.
    for (kind, value) in [("domain", "allowed.test"), ("email", "PIA@partner.test")] {
        let removed: bool = sqlx::query_scalar("SELECT orgkeeper.policy_remove($1, $2)")
            .bind(kind)
            .bind(value)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(removed, "{value}");
    }
    app_insert_org(&db, eve, "Evil Corp").await.unwrap();
}

#[tokio::test]
async fn the_policy_is_seeded_from_the_environment_once() {
    let db = TestDb::migrated().await;
    let migrate = |emails: &'static str, domains: &'static str| {
        let url = db.url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
                .arg("migrate")
                .env("DATABASE_URL", url)
                .env_remove("ORGKEEPER_BILLING")
                .env("ORGKEEPER_POLICY_PERSONAL_ORGS", "off")
                .env("ORGKEEPER_ALLOWED_OWNER_EMAILS", emails)
                .env("ORGKEEPER_ALLOWED_DOMAINS", domains)
                .output()
                .await
                .unwrap()
        }
    };
    let added_at = || async {
        sqlx::query_scalar::<_, Vec<chrono::DateTime<chrono::Utc>>>(
            "SELECT array_agg(added_at ORDER BY kind, value) FROM orgkeeper.org_creation_policy",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };

    // Malformed: exit 2 naming the variable, nothing recorded.
    let out = migrate("boss", "").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORGKEEPER_ALLOWED_OWNER_EMAILS"));
    assert!(policy(&db).await.is_empty());

    let out = migrate(" Boss@Else.test ,", "Allowed.test, ,partner.test ").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("org-creation policy: domain allowed.test (added)"),
        "{stdout}"
    );
    let seeded = vec![
        (
            "domain".to_string(),
            "allowed.test".to_string(),
            "orgkeeper migrate (ORGKEEPER_ALLOWED_DOMAINS)".to_string(),
        ),
        (
            "domain".into(),
            "partner.test".into(),
            "orgkeeper migrate (ORGKEEPER_ALLOWED_DOMAINS)".into(),
        ),
        (
            "email".into(),
            "boss@else.test".into(),
            "orgkeeper migrate (ORGKEEPER_ALLOWED_OWNER_EMAILS)".into(),
        ),
    ];
    assert_eq!(policy(&db).await, seeded);
    let first = added_at().await;

    // Again with the same environment: nothing is added twice.
    let out = migrate("boss@else.test", "allowed.test,partner.test").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("org-creation policy: domain allowed.test (already allowed)"),
        "{stdout}"
    );
    assert_eq!(policy(&db).await, seeded);
    assert_eq!(added_at().await, first);
    let personal: String = sqlx::query_scalar(
        "SELECT value FROM orgkeeper.deployment_setting WHERE name = 'policy_applies_to_personal_orgs'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(personal, "off");

    // And it is in force for the application.
    let eve = user(&db, "eve@evil.test").await;
    let boss = user(&db, "boss@else.test").await;
    let before = state(&db.pool).await;
    refused(
        app_insert_org(&db, eve, "Evil Corp").await,
        "42501",
        &["the email domain \"evil.test\" is not allowed to create organizations"],
    );
    assert_eq!(state(&db.pool).await, before);
    app_insert_org(&db, boss, "Boss Corp").await.unwrap();
}

/// The server process serving `conn`.
async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Waits until the backend `pid` waits for a lock.
async fn waits_for_a_lock(db: &TestDb, pid: i32, what: &str) {
    crate::support::wait_until(std::time::Duration::from_secs(10), what, || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
}

#[tokio::test]
async fn two_opposite_membership_moves_wait_for_each_other_instead_of_deadlocking() {
    // A moved membership bumps both organizations (the conflict the owner
    // check relies on), in key order: a move from A to B and one from B to
    // A lock the two org rows in the same order.
    let db = TestDb::migrated().await;
    let (olive, adam) = (
        user(&db, "olive@example.test").await,
        user(&db, "adam@example.test").await,
    );
    let (a, b) = (
        team(&db, "Alpha", olive).await,
        team(&db, "Beta", adam).await,
    );
    let (low, high) = (a.min(b), a.max(b));
    let (lena, hugo) = (
        user(&db, "lena@example.test").await,
        user(&db, "hugo@example.test").await,
    );
    for (org, who) in [(low, lena), (high, hugo)] {
        sqlx::query(
            "INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
             VALUES ($1, $2, orgkeeper.role_id('member'), 'active')",
        )
        .bind(org)
        .bind(who)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let move_to = |mut conn: sqlx::PgConnection, who: Uuid, to: Uuid| async move {
        let mut tx = conn.begin().await?;
        sqlx::query("UPDATE orgkeeper.org_member SET org_id = $2 WHERE user_id = $1")
            .bind(who)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    };

    // Deterministic interleaving: a third transaction holds the higher org
    // row (as a membership change of it would); Hugo's move from it waits
    // there, then Lena's move the other way starts.
    let mut holder = db.connect().await;
    let mut hold = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orgkeeper.org WHERE id = $1 FOR NO KEY UPDATE")
        .bind(high)
        .execute(&mut *hold)
        .await
        .unwrap();
    let (mut first, mut second) = (db.connect().await, db.connect().await);
    let (first_pid, second_pid) = (
        backend_pid(&mut first).await,
        backend_pid(&mut second).await,
    );
    let hugo_moves = tokio::spawn(move_to(first, hugo, low));
    waits_for_a_lock(&db, first_pid, "Hugo's move waits for the held org").await;
    let lena_moves = tokio::spawn(move_to(second, lena, high));
    waits_for_a_lock(&db, second_pid, "Lena's move waits").await;
    hold.commit().await.unwrap();

    hugo_moves.await.unwrap().expect("Hugo's move");
    lena_moves.await.unwrap().expect("Lena's move");
    let homes: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT user_id, org_id FROM orgkeeper.org_member WHERE user_id IN ($1, $2) ORDER BY user_id = $1 DESC",
    )
    .bind(hugo)
    .bind(lena)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(homes, vec![(hugo, low), (lena, high)]);
}

//! Stories through a real PgBouncer in transaction-pooling mode (Debian's
//! 1.18: no prepared statements across transactions), as most deployments
//! reach PostgreSQL: the application's inserts, `orgkeeper.user_id`, the
//! management and DBA functions, from several clients at once; and a daemon
//! whose pool goes through the pooler while its LISTEN is direct.
//!
//! How an application talks through the pooler (README, "Through a
//! connection pooler"): every unit of work in an explicit transaction that
//! starts with `set_config('orgkeeper.user_id', …, true)` (= `SET LOCAL`),
//! and sqlx statements unnamed (`.persistent(false)`; a statement cache of 0
//! alone still names them).

use crate::support::pooler::Pooler;
use crate::support::{
    assert_refusal, daemon_config, daemon_settings, status_counts, user, wait_until, TestDaemon,
    TestDb,
};
use orgkeeper::litellm::LiteLlmSimulator;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// Connection options for an application behind a transaction pooler.
fn app_options(url: &str) -> PgConnectOptions {
    url.parse::<PgConnectOptions>()
        .expect("pooler URL")
        .statement_cache_capacity(0)
}

async fn app_pool(pooler: &Pooler, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(app_options(&pooler.url()))
        .await
        .expect("pool through pgbouncer")
}

/// An unnamed (one-transaction) statement: what works through the pooler.
fn q(sql: &str) -> sqlx::query::Query<'_, Postgres, PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false)
}

fn q_scalar<T>(sql: &str) -> sqlx::query::QueryScalar<'_, Postgres, T, PgArguments>
where
    T: Send + Unpin,
    (T,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).persistent(false)
}

/// A transaction acting as the application (`orgkeeper_app`) for `user`:
/// the role and the user are both `LOCAL`, so they end with it.
async fn as_user(pool: &PgPool, user: Uuid) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    q("SET LOCAL ROLE orgkeeper_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    q("SELECT set_config('orgkeeper.user_id', $1, true)")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

async fn whoami(conn: &mut PgConnection) -> String {
    q_scalar("SELECT coalesce(current_setting('orgkeeper.user_id', true), '')")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The server connection's backend pid, in a transaction.
async fn server_pid(c: &mut PgConnection) -> i32 {
    let mut tx = c.begin().await.unwrap();
    let pid: i32 = q_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pid
}

/// One statement in a transaction, named by sqlx (`persistent`) or unnamed.
async fn in_tx(c: &mut PgConnection, persistent: bool) -> sqlx::Result<i64> {
    let mut tx = c.begin().await.unwrap();
    let result = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orgkeeper.role")
        .persistent(persistent)
        .fetch_one(&mut *tx)
        .await;
    let _ = tx.rollback().await;
    result
}

#[tokio::test]
async fn set_local_ends_with_its_transaction_and_a_session_setting_leaks_to_the_next_client() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    let alice = Uuid::new_v4();
    sqlx::query("INSERT INTO orgkeeper.users (id) VALUES ($1)")
        .bind(alice)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ('Alice Inc', $1)")
        .bind(alice)
        .execute(&db.pool)
        .await
        .unwrap();
    // Two clients of the pool with ONE server connection: whatever one leaves
    // on it, the other finds.
    let url = pooler.single_url();
    let mut a = PgConnection::connect_with(&app_options(&url))
        .await
        .unwrap();
    let mut b = PgConnection::connect_with(&app_options(&url))
        .await
        .unwrap();
    assert_eq!(
        server_pid(&mut a).await,
        server_pid(&mut b).await,
        "both clients share one server connection"
    );

    // SET LOCAL (set_config(..., true)): Alice's identity ends with her transaction.
    let mut tx = a.begin().await.unwrap();
    q("SELECT set_config('orgkeeper.user_id', $1, true)")
        .bind(alice.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(whoami(&mut tx).await, alice.to_string());
    tx.commit().await.unwrap();
    let mut tx = b.begin().await.unwrap();
    assert_eq!(
        whoami(&mut tx).await,
        "",
        "SET LOCAL stayed in its transaction"
    );
    q("SET LOCAL ROLE orgkeeper_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = q_scalar("SELECT count(*) FROM orgkeeper.org")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0, "the next client is nobody and sees nothing");
    tx.commit().await.unwrap();

    // A session-level setting (SET, or set_config(..., false)) outlives the
    // transaction on the server connection: the next client becomes Alice.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT set_config('orgkeeper.user_id', '{alice}', false)"
    )))
    .execute(&mut a)
    .await
    .unwrap();
    let mut tx = b.begin().await.unwrap();
    assert_eq!(
        whoami(&mut tx).await,
        alice.to_string(),
        "a session-level setting leaks to another client through the pooler"
    );
    q("SET LOCAL ROLE orgkeeper_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    let names: Vec<String> = q_scalar("SELECT name FROM orgkeeper.org")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(names, ["Alice Inc"], "and sees Alice's organizations");
    tx.commit().await.unwrap();
    sqlx::raw_sql("RESET orgkeeper.user_id")
        .execute(&mut a)
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlx_named_statements_collide_across_clients_and_unnamed_ones_do_not() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    let url = pooler.single_url();
    // sqlx's defaults, and a statement cache of 0 alone: each client names
    // its statements sqlx_s_1, sqlx_s_2, … and the server connection keeps
    // them, so the second client's first statement already exists there.
    for options in [url.parse::<PgConnectOptions>().unwrap(), app_options(&url)] {
        let mut a = PgConnection::connect_with(&options).await.unwrap();
        let mut b = PgConnection::connect_with(&options).await.unwrap();
        assert_eq!(in_tx(&mut a, true).await.unwrap(), 3);
        let err = in_tx(&mut b, true)
            .await
            .expect_err("named statements collide");
        assert_refusal(&err, "42P05", &["sqlx_s_1"]);
        // Leave no named statement behind for the next round.
        sqlx::raw_sql("DEALLOCATE ALL")
            .execute(&mut a)
            .await
            .unwrap();
    }
    // Unnamed statements (persistent(false)) live only until the next one.
    let mut a = PgConnection::connect_with(&app_options(&url))
        .await
        .unwrap();
    let mut b = PgConnection::connect_with(&app_options(&url))
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(in_tx(&mut a, false).await.unwrap(), 3);
        assert_eq!(in_tx(&mut b, false).await.unwrap(), 3);
    }
}

#[tokio::test]
async fn concurrent_clients_insert_orgs_through_the_pooler_and_each_sees_only_its_own() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    // 16 client connections, 4 server connections behind them.
    let pool = app_pool(&pooler, 16).await;
    const CLIENTS: usize = 8;
    const ORGS: usize = 4;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let pool = pool.clone();
        clients.spawn(async move {
            let me = Uuid::new_v4();
            // The user's own row first (the application may record its own user).
            let mut tx = as_user(&pool, me).await;
            q("INSERT INTO orgkeeper.users (id, email) VALUES ($1, $2)")
                .bind(me)
                .bind(format!("client{c}@example.com"))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let mut mine = Vec::new();
            for o in 0..ORGS {
                let mut tx = as_user(&pool, me).await;
                let id: Uuid = q_scalar(
                    "INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2) RETURNING id",
                )
                .bind(format!("Client {c} org {o}"))
                .bind(me)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                // Other clients' transactions run meanwhile on the shared server
                // connections; this one keeps its user to the end.
                q("SELECT pg_sleep(0.005)").execute(&mut *tx).await.unwrap();
                assert_eq!(whoami(&mut tx).await, me.to_string());
                tx.commit().await.unwrap();
                mine.push(id);
            }
            mine.sort();
            // Row security through the pooler: exactly this user's organizations.
            let mut tx = as_user(&pool, me).await;
            let seen: Vec<Uuid> = q_scalar("SELECT id FROM orgkeeper.org ORDER BY id")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            assert_eq!(seen, mine, "client {c} sees exactly its own organizations");
            let members: Vec<Uuid> = q_scalar("SELECT DISTINCT user_id FROM orgkeeper.org_member")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            assert_eq!(members, [me]);
            // Not another's organization, even by naming it.
            let others: i64 = q_scalar("SELECT count(*) FROM orgkeeper.org WHERE created_by <> $1")
                .bind(me)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(others, 0);
            tx.commit().await.unwrap();
            // Without the setting, nothing.
            let mut tx = pool.begin().await.unwrap();
            q("SET LOCAL ROLE orgkeeper_app")
                .execute(&mut *tx)
                .await
                .unwrap();
            let nobody: i64 = q_scalar("SELECT count(*) FROM orgkeeper.org")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(nobody, 0);
            tx.commit().await.unwrap();
            (me, mine)
        });
    }
    let results = clients.join_all().await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total as usize, CLIENTS * ORGS);
    for (me, mine) in results {
        let owned: Vec<Uuid> = sqlx::query_scalar(
            "SELECT m.org_id FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
              WHERE m.user_id = $1 AND r.name = 'owner' AND m.status = 'active' ORDER BY m.org_id",
        )
        .bind(me)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(owned, mine, "every org got its creator as owner");
    }
    assert!(
        pooler.log().contains("db=app"),
        "the clients went through pgbouncer"
    );
}

#[tokio::test]
async fn management_functions_through_the_pooler_from_several_organizations_at_once() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    let pool = app_pool(&pooler, 12).await;
    let mut teams = tokio::task::JoinSet::new();
    for t in 0..4 {
        let owner = user(&db, &format!("owner{t}@example.com")).await;
        let bob = user(&db, &format!("bob{t}@example.com")).await;
        let carol = user(&db, &format!("carol{t}@example.com")).await;
        let pool = pool.clone();
        teams.spawn(async move {
            let mut tx = as_user(&pool, owner).await;
            let org: Uuid = q_scalar(
                "INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2) RETURNING id",
            )
            .bind(format!("Team {t}"))
            .bind(owner)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();

            let mut tx = as_user(&pool, owner).await;
            q("SELECT orgkeeper.add_member($1, $2, $3, 'admin')")
                .bind(owner)
                .bind(org)
                .bind(bob)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();

            let mut tx = as_user(&pool, bob).await;
            q("SELECT orgkeeper.accept_membership($1, $2)")
                .bind(bob)
                .bind(org)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();

            let mut tx = as_user(&pool, owner).await;
            let token: String =
                q_scalar("SELECT orgkeeper.create_invitation($1, $2, $3, 'member')")
                    .bind(owner)
                    .bind(org)
                    .bind(format!("carol{t}@example.com"))
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();

            let mut tx = as_user(&pool, carol).await;
            let joined: Uuid = q_scalar("SELECT orgkeeper.accept_invitation($1, $2)")
                .bind(carol)
                .bind(&token)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(joined, org);
            tx.commit().await.unwrap();

            let mut tx = as_user(&pool, owner).await;
            q("SELECT orgkeeper.transfer_ownership($1, $2, $3)")
                .bind(owner)
                .bind(org)
                .bind(bob)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();

            // list_orgs as each of them, each in their own transaction.
            let mut roles = Vec::new();
            for who in [owner, bob, carol] {
                let mut tx = as_user(&pool, who).await;
                let listed: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
                    "SELECT org_id, role, status, members FROM orgkeeper.list_orgs($1)",
                )
                .persistent(false)
                .bind(who)
                .fetch_all(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(listed.len(), 1, "{listed:?}");
                assert_eq!(listed[0].0, org);
                assert_eq!(listed[0].2, "active");
                assert_eq!(listed[0].3, 3);
                roles.push(listed[0].1.clone());
            }
            // The transfer swapped roles: Bob owns it, the old owner is an admin.
            assert_eq!(roles, ["admin", "owner", "member"]);

            // Acting as someone else is refused through the pooler too.
            let mut tx = as_user(&pool, carol).await;
            let refused = q("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
                .bind(bob)
                .bind(org)
                .bind(carol)
                .execute(&mut *tx)
                .await;
            assert_refusal(&refused.unwrap_err(), "42501", &[]);
            tx.rollback().await.unwrap();
        });
    }
    teams.join_all().await;
}

#[tokio::test]
async fn dba_functions_through_the_pooler_from_several_sessions_at_once() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    // A DBA (a trusted role) through the same transaction pool.
    let pool = app_pool(&pooler, 8).await;
    let db_pool = db.pool.clone();
    let mut legacy = Vec::new();
    for i in 0..6 {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO orgkeeper.user_settings (user_id, email, llm_model) VALUES ($1, $2, 'gpt-4o')")
            .bind(id)
            .bind(format!("legacy{i}@example.com"))
            .execute(&db.pool)
            .await
            .unwrap();
        legacy.push(id);
    }
    // Every call in an explicit transaction: outside one, sqlx parses and
    // binds in two round trips, and the pooler may hand the second to
    // another server connection (README).
    let mut sessions = tokio::task::JoinSet::new();
    for id in legacy.clone() {
        let (pool, db_pool) = (pool.clone(), db_pool.clone());
        sessions.spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let report: serde_json::Value = q_scalar("SELECT orgkeeper.migrate_user($1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(report["status"], "migrated", "{report}");
            tx.commit().await.unwrap();

            let mut tx = pool.begin().await.unwrap();
            let again: serde_json::Value = q_scalar("SELECT orgkeeper.migrate_user($1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            assert_eq!(again["status"], "already_migrated", "{again}");
            let checks: Vec<(String, bool, Option<String>)> = sqlx::query_as(
                "SELECT check_name, ok, detail FROM orgkeeper.verify_user_migration($1)",
            )
            .persistent(false)
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            assert!(!checks.is_empty());
            let org_check = checks
                .iter()
                .find(|(name, _, _)| name.contains("org"))
                .unwrap_or_else(|| panic!("an org check in {checks:?}"));
            assert!(org_check.1, "{checks:?}");

            let mut tx = pool.begin().await.unwrap();
            let rolled: serde_json::Value =
                q_scalar("SELECT orgkeeper.rollback_user_migration($1)")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            assert!(rolled.is_object(), "{rolled}");
            let migrated: bool = sqlx::query_scalar(
                "SELECT already_migrated FROM orgkeeper.user_settings WHERE user_id = $1",
            )
            .bind(id)
            .fetch_one(&db_pool)
            .await
            .unwrap();
            assert!(!migrated, "rolled back");
        });
    }
    sessions.join_all().await;

    // retry_action (after cancel_action) on actions the migrations enqueued.
    let actions: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM orgkeeper.pending_external_actions WHERE status = 'pending' ORDER BY id LIMIT 4",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(actions.len(), 4);
    let mut sessions = tokio::task::JoinSet::new();
    for id in actions {
        let pool = pool.clone();
        sessions.spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            q("SELECT orgkeeper.cancel_action($1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            q("SELECT orgkeeper.retry_action($1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
            let status: String =
                q_scalar("SELECT status FROM orgkeeper.pending_external_actions WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(status, "pending");
        });
    }
    sessions.join_all().await;
}

#[tokio::test]
async fn a_daemon_claims_through_the_pooler_and_listens_directly() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = orgkeeper::secrets::generate_key();
    let mut settings = daemon_settings("pooled", Duration::from_secs(30));
    // A poll far beyond the wait below: only NOTIFY, on the direct LISTEN
    // connection, can wake the daemon in time.
    settings.poll = Duration::from_secs(120);
    let mut config = daemon_config(&pooler.session_url(), &sim, &key, settings);
    config.listen_database_url = Some(db.url.clone());
    let daemon = TestDaemon::start(config);
    wait_until(LONG, "the daemon listens on its direct connection", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE datname = current_database() AND query ILIKE 'LISTEN%orgkeeper_actions%')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    // Let the daemon settle into waiting for a notification.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pool = app_pool(&pooler, 12).await;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..6 {
        let pool = pool.clone();
        clients.spawn(async move {
            let me = Uuid::new_v4();
            for o in 0..5 {
                let mut tx = as_user(&pool, me).await;
                if o == 0 {
                    q("INSERT INTO orgkeeper.users (id) VALUES ($1)")
                        .bind(me)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                q("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2)")
                    .bind(format!("Pooled {c}.{o}"))
                    .bind(me)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        });
    }
    clients.join_all().await;
    wait_until(
        Duration::from_secs(30),
        "every org inserted through the pooler is active",
        || async { status_counts(&db.pool).await.get("active").copied() == Some(30) },
    )
    .await;
    let teams: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT litellm_team_id) FROM orgkeeper.org WHERE litellm_team_id IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(teams, 30);
    daemon.stop().await;
    let log = pooler.log();
    assert!(
        log.contains("db=daemon"),
        "the daemon's pool went through pgbouncer: {log}"
    );
}

/// `orgkeeper listen --check` with its pool through the pooler checks the
/// direct LISTEN connection too, and names the setting when it fails.
#[tokio::test]
async fn listen_check_through_the_pooler_checks_the_listen_connection() {
    let db = TestDb::migrated().await;
    let Some(pooler) = Pooler::start(&db) else {
        return;
    };
    let key = orgkeeper::secrets::generate_key();
    let session_url = pooler.session_url();
    let check = |listen_url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
            .args(["listen", "--check"])
            .env_clear()
            .env("DATABASE_URL", &session_url)
            .env("ORGKEEPER_LISTEN_DATABASE_URL", listen_url)
            .env("LITELLM_BASE_URL", "http://127.0.0.1:4000")
            .env("LITELLM_MASTER_KEY", "sk-master-key-0123456789")
            .env(
                "ORGKEEPER_SECRET_KEY",
                secrecy::ExposeSecret::expose_secret(&key),
            )
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, output) = check(&db.url);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("configuration ok"), "{output}");
    let (code, output) = check("postgres://postgres@127.0.0.1:1/none");
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("ORGKEEPER_LISTEN_DATABASE_URL"),
        "names the setting: {output}"
    );
}

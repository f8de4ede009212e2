//! Stories about a new deployment, whose tables start empty: what a session
//! plans while a table is tiny it keeps for as long as it lives (plpgsql and
//! foreign-key checks cache their plans), so no plan on the insert path may
//! depend on a table being small.

use crate::support::{app, insert_orgs, user, TestDb};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Sequential scans of `orgkeeper.org` this session has counted and not yet
/// reported (`pg_stat_xact_user_tables`: the open transaction's, and on
/// PostgreSQL 15 also earlier transactions' not yet flushed).
async fn org_scans_so_far(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(seq_scan), 0) FROM pg_stat_xact_user_tables
          WHERE relid = 'orgkeeper.org'::regclass",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Inserts an organization for `owner` as the application, in its own
/// transaction, and returns how many sequential scans of `orgkeeper.org`
/// the INSERT took (counted before and after it, inside the transaction).
async fn org_scans_of_an_insert(conn: &mut PgConnection, owner: Uuid, name: &str) -> i64 {
    let mut tx = conn.begin().await.unwrap();
    let before = org_scans_so_far(&mut tx).await;
    sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2)")
        .bind(name)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .unwrap();
    let scans = org_scans_so_far(&mut tx).await - before;
    tx.commit().await.unwrap();
    scans
}

#[tokio::test]
async fn an_application_session_from_the_first_day_does_not_scan_the_grown_org_table() {
    let db = TestDb::migrated().await;
    // No ANALYZE in between (it would invalidate the plans): autovacuum's
    // comes a minute later at best, and not at all where it is off.
    sqlx::query("ALTER TABLE orgkeeper.org SET (autovacuum_enabled = false)")
        .execute(&db.pool)
        .await
        .unwrap();
    let owner = user(&db, "founder@example.com").await;
    let mut conn = app(&db, Some(owner)).await;
    // The deployment's first organizations, from one application session:
    // past the fifth execution plpgsql keeps a generic plan, made here on
    // an empty table.
    for i in 1..=6 {
        org_scans_of_an_insert(&mut conn, owner, &format!("Day One {i}")).await;
    }
    insert_orgs(&db.pool, "Grown", 2_000).await;

    let scans = org_scans_of_an_insert(&mut conn, owner, "Day Two").await;
    assert_eq!(
        scans, 0,
        "an org INSERT in a session that planned on an empty org table scanned the grown table {scans} times"
    );
}

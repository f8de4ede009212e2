//! Stories about a new deployment, whose tables start empty: what a session
//! plans while a table is tiny it keeps for as long as it lives (plpgsql and
//! foreign-key checks cache their plans), so no plan on the insert path may
//! depend on a table being small.

use crate::support::{app, insert_orgs, table_counter, user, without_autovacuum, TestDb};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// Inserts an organization for `owner` as the application, in its own
/// transaction, and returns how many sequential scans of `orgkeeper.org`
/// the INSERT took (counted before and after it, inside the transaction).
async fn org_scans_of_an_insert(conn: &mut PgConnection, owner: Uuid, name: &str) -> i64 {
    let mut tx = conn.begin().await.unwrap();
    let before = table_counter(&mut tx, "org", "seq_scan").await;
    sqlx::query("INSERT INTO orgkeeper.org (name, created_by) VALUES ($1, $2)")
        .bind(name)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .unwrap();
    let scans = table_counter(&mut tx, "org", "seq_scan").await - before;
    tx.commit().await.unwrap();
    scans
}

#[tokio::test]
async fn an_application_session_from_the_first_day_does_not_scan_the_grown_org_table() {
    let db = TestDb::migrated().await;
    // No ANALYZE in between (it would invalidate the plans): autovacuum's
    // comes a minute later at best, and not at all where it is off.
    without_autovacuum(&db, "org").await;
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

//! The schema is reviewable: a `pg_dump --schema-only` of a freshly migrated
//! database is committed as `tests/fixtures/orgkeeper_schema.sql`, and this
//! test fails when `orgkeeper migrate` produces anything else — so every
//! change to `migrations/` or `sql/` shows up as a diff of that file.
//!
//! After changing the schema on purpose, regenerate it and commit the diff:
//! `ORGKEEPER_BLESS_SCHEMA=1 cargo test --test schema_dump`.

use crate::support::TestDb;

const COMMITTED: &str = "tests/fixtures/orgkeeper_schema.sql";

/// The dump without what differs between machines and runs: pg_dump's
/// version header, session settings and the random `\restrict` key.
fn normalize(dump: &str) -> String {
    dump.lines()
        .filter(|l| {
            !(l.starts_with("-- Dumped from")
                || l.starts_with("-- Dumped by")
                || l.starts_with("SET ")
                || l.starts_with("SELECT pg_catalog.set_config")
                || l.starts_with("\\restrict")
                || l.starts_with("\\unrestrict"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
        + "\n"
}

#[tokio::test]
async fn the_committed_schema_dump_is_what_migrate_produces() {
    let db = TestDb::migrated().await;
    let pg_dump = orgkeeper::pgcluster::program("pg_dump").expect("pg_dump");
    let out = tokio::process::Command::new(pg_dump)
        .args([
            "--schema-only",
            "--schema=orgkeeper",
            "--no-tablespaces",
            "--dbname",
        ])
        .arg(&db.url)
        .output()
        .await
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = normalize(&String::from_utf8_lossy(&out.stdout));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    if std::env::var_os("ORGKEEPER_BLESS_SCHEMA").is_some() {
        std::fs::write(&path, &dumped).expect("write the schema dump");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != dumped {
        let first = committed
            .lines()
            .zip(dumped.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(dumped.lines().count()));
        panic!(
            "the schema `orgkeeper migrate` produces differs from {COMMITTED} (first at line {}: \
             committed {:?}, migrated {:?}); if the change is intended, run \
             ORGKEEPER_BLESS_SCHEMA=1 cargo test --test schema_dump and commit the diff",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end>"),
            dumped.lines().nth(first).unwrap_or("<end>")
        );
    }
}

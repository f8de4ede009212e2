//! Stories about `orgkeeper secrets rotate`: every ciphertext at rest ends
//! up ok2 under the current key, bound to its place, decrypting to what it
//! held; nothing a concurrent writer stored is overwritten; a value that
//! cannot be decrypted is named and left alone.

use crate::support::{
    daemon_config, daemon_settings, insert_orgs, table_counter, wait_until, TestDaemon, TestDb,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, Generate, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use indicatif::ProgressBar;
use orgkeeper::commands::secrets::{rotate, Rotation, RotationReport};
use orgkeeper::litellm::LiteLlmSimulator;
use orgkeeper::secrets::{generate_key, Keyring, Place, SecretError};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// A version-1 ciphertext, built from the documented format alone (no
/// associated data), as the code before version 2 wrote them.
fn ok1(key: &SecretString, plaintext: &str) -> String {
    let key = STANDARD.decode(key.expose_secret()).unwrap();
    let id = hex::encode(
        &Sha256::new()
            .chain_update(b"orgkeeper-key-id:")
            .chain_update(&key)
            .finalize()[..4],
    );
    let nonce = XNonce::generate();
    let mut sealed = nonce.to_vec();
    sealed.extend(
        XChaCha20Poly1305::new_from_slice(&key)
            .unwrap()
            .encrypt(&nonce, plaintext.as_bytes())
            .unwrap(),
    );
    format!("ok1:{id}:{}", URL_SAFE_NO_PAD.encode(sealed))
}

/// One place holding a secret, as the test names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Spot {
    table: &'static str,
    column: &'static str,
    row: String,
}

impl Spot {
    fn new(table: &'static str, column: &'static str, row: impl ToString) -> Self {
        Spot {
            table,
            column,
            row: row.to_string(),
        }
    }

    fn place(&self) -> Place {
        Place::new(self.table, self.column, self.row.clone())
    }

    /// Stores `value` here, as an application or the daemon would.
    async fn store(&self, pool: &PgPool, value: &str) {
        let sql = match (self.table, self.column) {
            ("org", column) => format!("UPDATE orgkeeper.org SET {column} = $1 WHERE id = $2::uuid"),
            ("org_member", column) => format!(
                "UPDATE orgkeeper.org_member SET {column} = $1
                  WHERE org_id = split_part($2, '/', 1)::uuid AND user_id = split_part($2, '/', 2)::uuid"
            ),
            ("pending_external_actions", "progress.key") => {
                "UPDATE orgkeeper.pending_external_actions
                    SET progress = progress || jsonb_build_object('key', $1::text) WHERE id = $2::bigint"
                    .into()
            }
            (table, column) => {
                format!("UPDATE orgkeeper.{table} SET {column} = $1 WHERE id = $2::bigint")
            }
        };
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .bind(&self.row)
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1, "{self:?}");
    }
}

/// Every ciphertext stored in every secret place, read with plain SQL
/// written independently of `orgkeeper.secret_columns()`.
async fn every_ciphertext(pool: &PgPool) -> Vec<(Spot, String)> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT t, c, r, v FROM (
             SELECT 'org' t, 'llm_api_key' c, id::text r, llm_api_key v FROM orgkeeper.org
             UNION ALL SELECT 'org', 'llm_api_key_for_byor', id::text, llm_api_key_for_byor FROM orgkeeper.org
             UNION ALL SELECT 'org', 'search_api_key', id::text, search_api_key FROM orgkeeper.org
             UNION ALL SELECT 'org', 'sandbox_api_key', id::text, sandbox_api_key FROM orgkeeper.org
             UNION ALL SELECT 'org_member', 'llm_api_key', org_id || '/' || user_id, llm_api_key FROM orgkeeper.org_member
             UNION ALL SELECT 'org_member', 'llm_api_key_for_byor', org_id || '/' || user_id, llm_api_key_for_byor
                         FROM orgkeeper.org_member
             UNION ALL SELECT 'custom_secrets', 'secret_value', id::text, secret_value FROM orgkeeper.custom_secrets
             UNION ALL SELECT 'gitlab_webhook', 'webhook_secret', id::text, webhook_secret FROM orgkeeper.gitlab_webhook
             UNION ALL SELECT 'pending_external_actions', 'progress.key', id::text, progress ->> 'key'
                         FROM orgkeeper.pending_external_actions
         ) s WHERE v IS NOT NULL ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let name = |s: &str| -> &'static str {
        [
            "org",
            "org_member",
            "custom_secrets",
            "gitlab_webhook",
            "pending_external_actions",
            "llm_api_key",
            "llm_api_key_for_byor",
            "search_api_key",
            "sandbox_api_key",
            "secret_value",
            "webhook_secret",
            "progress.key",
        ]
        .into_iter()
        .find(|n| *n == s)
        .unwrap()
    };
    rows.into_iter()
        .map(|(t, c, r, v)| (Spot::new(name(&t), name(&c), r), v))
        .collect()
}

async fn run(pool: &PgPool, ring: &Keyring, batch: u32, dry_run: bool) -> RotationReport {
    rotate(
        pool,
        ring,
        Rotation { batch, dry_run },
        &ProgressBar::hidden(),
    )
    .await
    .expect("rotation runs")
}

/// Owners of new orgs, and rows of the related secret tables for them.
async fn org_with_related_rows(pool: &PgPool, name: &str) -> (Uuid, Uuid, i64, i64, i64) {
    let org = insert_orgs(pool, name, 1).await[0];
    let (owner, action): (Uuid, i64) = sqlx::query_as(
        "SELECT o.created_by, a.id FROM orgkeeper.org o
           JOIN orgkeeper.pending_external_actions a ON a.org_id = o.id WHERE o.id = $1",
    )
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap();
    let secret: i64 = sqlx::query_scalar(
        "INSERT INTO orgkeeper.custom_secrets (user_id, org_id, secret_name) VALUES ($1, $2, 'GH') RETURNING id",
    )
    .bind(owner)
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap();
    let hook: i64 = sqlx::query_scalar(
        "INSERT INTO orgkeeper.gitlab_webhook (user_id, org_id, project_id) VALUES ($1, $2, 'p') RETURNING id",
    )
    .bind(owner)
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap();
    (org, owner, action, secret, hook)
}

#[tokio::test]
async fn old_key_and_ok1_values_everywhere_become_ok2_under_the_new_key_and_a_second_run_rotates_nothing(
) {
    let db = TestDb::migrated().await;
    let (old_key, older_key, new_key) = (generate_key(), generate_key(), generate_key());
    let old_ring = Keyring::new(&old_key, &[], None).unwrap();
    let ring = Keyring::new(&new_key, &[old_key, older_key.clone()], None).unwrap();

    // Every secret place of three organizations, alternately ok2 under the
    // old key and ok1 under an even older one.
    let mut expected = Vec::new();
    for i in 0..3 {
        let (org, owner, action, secret, hook) =
            org_with_related_rows(&db.pool, &format!("Rotate {i}")).await;
        let spots = [
            Spot::new("org", "llm_api_key", org),
            Spot::new("org", "llm_api_key_for_byor", org),
            Spot::new("org", "search_api_key", org),
            Spot::new("org", "sandbox_api_key", org),
            Spot::new("org_member", "llm_api_key", format!("{org}/{owner}")),
            Spot::new("custom_secrets", "secret_value", secret),
            Spot::new("gitlab_webhook", "webhook_secret", hook),
            Spot::new("pending_external_actions", "progress.key", action),
        ];
        for (j, spot) in spots.into_iter().enumerate() {
            let plain = format!("sk-{}-{}-{}", spot.table, spot.column, spot.row);
            let value = if (i + j) % 2 == 0 {
                old_ring.encrypt(&spot.place(), &SecretString::from(plain.clone()))
            } else {
                ok1(&older_key, &plain)
            };
            spot.store(&db.pool, &value).await;
            expected.push((spot, plain));
        }
    }
    assert_eq!(
        Place::new("pending_external_actions", "progress.key", "7"),
        Place::action_progress(7, "key"),
        "the rotation's place of a saved key is the daemon's"
    );
    // One value already current, one legacy value (left for user migration).
    let (_, _, _, current_secret, legacy_hook) =
        org_with_related_rows(&db.pool, "Rotate current").await;
    let current = Spot::new("custom_secrets", "secret_value", current_secret);
    current
        .store(
            &db.pool,
            &ring.encrypt(&current.place(), &SecretString::from("sk-current")),
        )
        .await;
    let legacy = Spot::new("gitlab_webhook", "webhook_secret", legacy_hook);
    legacy.store(&db.pool, "gAAAAABlegacy-fernet-token").await;
    let rotations = expected.len() as u64;
    assert_eq!(rotations, 24);

    let before = every_ciphertext(&db.pool).await;
    let dry = run(&db.pool, &ring, 2, true).await;
    assert_eq!(
        dry,
        RotationReport {
            rotated: rotations,
            already_current: 1,
            legacy_skipped: 1,
            ..RotationReport::default()
        }
    );
    assert_eq!(
        every_ciphertext(&db.pool).await,
        before,
        "a dry run writes nothing"
    );

    // Batches of 2: pages cross rows and the composite key of org_member.
    let report = run(&db.pool, &ring, 2, false).await;
    assert_eq!(report, dry, "the run does what the dry run counted");
    assert!(report.complete());

    let new_only = Keyring::new(&new_key, &[], None).unwrap();
    let stored = every_ciphertext(&db.pool).await;
    assert_eq!(stored.len(), expected.len() + 2);
    for (spot, value) in &stored {
        if *spot == legacy {
            assert_eq!(value, "gAAAAABlegacy-fernet-token", "legacy left alone");
            continue;
        }
        assert!(
            value.starts_with(&format!("ok2:{}:", ring.current_key_id())),
            "{spot:?}: {value}"
        );
        let plain = new_only
            .decrypt(&spot.place(), value)
            .unwrap_or_else(|e| panic!("{spot:?}: {e}"));
        let want = match expected.iter().find(|(s, _)| s == spot) {
            Some((_, p)) => p.as_str(),
            None => "sk-current",
        };
        assert_eq!(plain.expose_secret(), want, "{spot:?}");
    }

    let again = run(&db.pool, &ring, 500, false).await;
    assert_eq!(
        again,
        RotationReport {
            already_current: rotations + 1,
            legacy_skipped: 1,
            ..RotationReport::default()
        },
        "a second run finds nothing left"
    );
    assert_eq!(every_ciphertext(&db.pool).await, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_while_a_daemon_keeps_provisioning_leaves_every_key_current_and_known_to_litellm()
{
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let (old_key, new_key) = (generate_key(), generate_key());

    // Organizations provisioned under the old key.
    let old_daemon = TestDaemon::start(daemon_config(
        &db.url,
        &sim,
        &old_key,
        daemon_settings("old", LONG),
    ));
    insert_orgs(&db.pool, "Before", 40).await;
    wait_until(LONG, "40 orgs active", || active_is(&db.pool, 40)).await;
    old_daemon.stop().await;

    // The daemon restarted with the new key (the old one still accepted),
    // and applications keep creating organizations during the rotation.
    let mut config = daemon_config(&db.url, &sim, &new_key, daemon_settings("new", LONG));
    config.keyring = Keyring::new(&new_key, std::slice::from_ref(&old_key), None).unwrap();
    let daemon = TestDaemon::start(config);
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) || round < 3 {
                insert_orgs(&pool, &format!("During {round}"), 3).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            round * 3
        })
    };
    let ring = Keyring::new(&new_key, &[old_key], None).unwrap();
    let report = run(&db.pool, &ring, 5, false).await;
    stop.store(true, Ordering::SeqCst);
    let during = inserter.await.unwrap() as i64;
    assert!(report.undecryptable.is_empty(), "{report:?}");
    assert!(
        report.rotated >= 80,
        "40 member keys and 40 saved keys: {report:?}"
    );

    let total = 40 + during;
    wait_until(LONG, "every org active", || active_is(&db.pool, total)).await;
    daemon.stop().await;

    // Whatever changed during the run was written by the new daemon, so a
    // second run has nothing to do.
    let again = run(&db.pool, &ring, 500, true).await;
    assert_eq!(
        (again.rotated, again.undecryptable.len()),
        (0, 0),
        "{again:?}"
    );

    let new_only = Keyring::new(&new_key, &[], None).unwrap();
    let mut member_keys = 0;
    for (spot, value) in every_ciphertext(&db.pool).await {
        assert!(new_only.is_current(&value), "{spot:?} is not current");
        let plain = new_only
            .decrypt(&spot.place(), &value)
            .unwrap_or_else(|e| panic!("{spot:?}: {e}"));
        if spot.table == "org_member" {
            member_keys += 1;
            assert!(
                sim.has_key(plain.expose_secret()),
                "{spot:?}: the stored key is the one LiteLLM knows"
            );
        }
    }
    assert_eq!(member_keys, total, "every owner has their key");
}

async fn active_is(pool: &PgPool, n: i64) -> bool {
    crate::support::status_counts(pool)
        .await
        .get("active")
        .copied()
        == Some(n)
}

#[tokio::test]
async fn undecryptable_values_are_named_left_unchanged_and_make_the_command_fail() {
    let db = TestDb::migrated().await;
    let (old_key, new_key, stranger_key) = (generate_key(), generate_key(), generate_key());
    let old_ring = Keyring::new(&old_key, &[], None).unwrap();
    let stranger = Keyring::new(&stranger_key, &[], None).unwrap();
    let ring = Keyring::new(&new_key, std::slice::from_ref(&old_key), None).unwrap();
    let secret = |s: &str| SecretString::from(s.to_string());

    let (org_a, owner_a, _, secret_a, hook_a) = org_with_related_rows(&db.pool, "A").await;
    let (org_b, owner_b, _, _, _) = org_with_related_rows(&db.pool, "B").await;
    let member_a = Spot::new("org_member", "llm_api_key", format!("{org_a}/{owner_a}"));
    let member_b = Spot::new("org_member", "llm_api_key", format!("{org_b}/{owner_b}"));
    let custom = Spot::new("custom_secrets", "secret_value", secret_a);
    let hook = Spot::new("gitlab_webhook", "webhook_secret", hook_a);

    // A's key sealed by a key nobody configured; B's row holds a copy of a
    // ciphertext made for A's row; a truncated value; one good value.
    let unknown = stranger.encrypt(&member_a.place(), &secret("sk-a"));
    let copied = old_ring.encrypt(&member_a.place(), &secret("sk-a"));
    let full = old_ring.encrypt(&custom.place(), &secret("sk-custom"));
    let truncated = full[..full.len() - 7].to_string();
    member_a.store(&db.pool, &unknown).await;
    member_b.store(&db.pool, &copied).await;
    custom.store(&db.pool, &truncated).await;
    hook.store(
        &db.pool,
        &old_ring.encrypt(&hook.place(), &secret("sk-hook")),
    )
    .await;

    let report = run(&db.pool, &ring, 500, false).await;
    assert_eq!(report.rotated, 1, "the rest continues: {report:?}");
    let mut named: Vec<String> = report
        .undecryptable
        .iter()
        .map(ToString::to_string)
        .collect();
    named.sort();
    let mut want = vec![
        format!(
            "{}: {}",
            member_a.place(),
            SecretError::UnknownKey(stranger.current_key_id().into())
        ),
        format!(
            "org_member.llm_api_key of row {org_b}/{owner_b}: ciphertext does not belong at org_member.llm_api_key of row {org_b}/{owner_b} (copied from another row or column, or damaged)"
        ),
        format!(
            "custom_secrets.secret_value of row {secret_a}: {}",
            ring.decrypt(&custom.place(), &truncated).unwrap_err()
        ),
    ];
    want.sort();
    assert_eq!(named, want);

    let check_unchanged = |stored: Vec<(Spot, String)>| {
        for (spot, value) in [
            (&member_a, &unknown),
            (&member_b, &copied),
            (&custom, &truncated),
        ] {
            let now = stored.iter().find(|(s, _)| s == spot).map(|(_, v)| v);
            assert_eq!(now, Some(value), "{spot:?} left unchanged");
        }
    };
    check_unchanged(every_ciphertext(&db.pool).await);

    // The command: each named on stderr, exit status 1, nothing written.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orgkeeper"))
        .args(["secrets", "rotate", "--batch", "1"])
        .env("DATABASE_URL", &db.url)
        .env("ORGKEEPER_SECRET_KEY", new_key.expose_secret())
        .env("ORGKEEPER_OLD_SECRET_KEYS", old_key.expose_secret())
        .env_remove("ORGKEEPER_ROTATE_DRY_RUN")
        .env_remove("ORGKEEPER_ROTATE_BATCH")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for line in &want {
        assert!(
            stderr.contains(&format!("error: {line}")),
            "{line} not in {stderr}"
        );
    }
    assert!(
        stdout.contains("already current") && stdout.contains("undecryptable"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("sk-") && !stderr.contains("sk-"),
        "no plaintext"
    );
    check_unchanged(every_ciphertext(&db.pool).await);
}

#[tokio::test]
async fn a_value_written_between_read_and_write_is_not_overwritten_and_the_next_run_rotates_it() {
    let db = TestDb::migrated().await;
    let (old_key, new_key) = (generate_key(), generate_key());
    let old_ring = Keyring::new(&old_key, &[], None).unwrap();
    let (org, owner, ..) = org_with_related_rows(&db.pool, "Racy").await;
    let member = Spot::new("org_member", "llm_api_key", format!("{org}/{owner}"));
    member
        .store(
            &db.pool,
            &old_ring.encrypt(&member.place(), &SecretString::from("sk-first")),
        )
        .await;

    // A writer changes the row and holds its transaction open: the
    // rotation reads the committed value, then its write waits on the row.
    let replaced = old_ring.encrypt(&member.place(), &SecretString::from("sk-second"));
    let mut writer = db.connect().await;
    sqlx::query("BEGIN").execute(&mut writer).await.unwrap();
    sqlx::query(
        "UPDATE orgkeeper.org_member SET llm_api_key = $1 WHERE org_id = $2 AND user_id = $3",
    )
    .bind(&replaced)
    .bind(org)
    .bind(owner)
    .execute(&mut writer)
    .await
    .unwrap();

    let rotation = {
        let (pool, new_key, old_key) = (db.pool.clone(), new_key.clone(), old_key.clone());
        tokio::spawn(async move {
            let ring = Keyring::new(&new_key, &[old_key], None).unwrap();
            run(&pool, &ring, 500, false).await
        })
    };
    crate::support::wait_for_lock_wait(
        &db.pool,
        LONG,
        "the rotation's write waits for the writer",
        "swap_secrets",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut writer).await.unwrap();

    let report = rotation.await.unwrap();
    assert_eq!(
        (report.rotated, report.changed_concurrently),
        (0, 1),
        "{report:?}"
    );
    assert!(!report.complete());
    let stored = every_ciphertext(&db.pool).await;
    let now = stored.iter().find(|(s, _)| *s == member).unwrap();
    assert_eq!(now.1, replaced, "the writer's value is not overwritten");

    // The next run finds it and rotates what the writer stored.
    let ring = Keyring::new(&new_key, &[old_key], None).unwrap();
    let again = run(&db.pool, &ring, 500, false).await;
    assert_eq!(
        (again.rotated, again.changed_concurrently),
        (1, 0),
        "{again:?}"
    );
    let stored = every_ciphertext(&db.pool).await;
    let now = &stored.iter().find(|(s, _)| *s == member).unwrap().1;
    assert!(ring.is_current(now));
    assert_eq!(
        ring.decrypt(&member.place(), now).unwrap().expose_secret(),
        "sk-second"
    );
}

#[tokio::test]
async fn every_listed_secret_column_exists_and_its_row_key_is_the_primary_key() {
    let db = TestDb::migrated().await;
    // The list orgkeeper.secret_columns() against the catalog: the column
    // (or jsonb column of a "<column>.<field>") exists, and the key columns
    // are the table's primary key in order, so the row key of the
    // associated data is what the README says.
    let mismatches: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s.%s: key %s, primary key %s', c.table_name, c.column_name, c.key_columns, pk.cols)
           FROM orgkeeper.secret_columns() c
           LEFT JOIN LATERAL (
               SELECT array_agg(a.attname::text ORDER BY k.ord) AS cols
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = format('orgkeeper.%I', c.table_name)::regclass AND i.indisprimary
           ) pk ON true
          WHERE pk.cols IS DISTINCT FROM c.key_columns
             OR NOT EXISTS (SELECT 1 FROM pg_attribute a
                             WHERE a.attrelid = format('orgkeeper.%I', c.table_name)::regclass
                               AND a.attname = split_part(c.column_name, '.', 1) AND NOT a.attisdropped)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(mismatches.is_empty(), "{mismatches:?}");

    // The daemon's re-encryption names places by {table, column, key}
    // items (Place::from_item); it must agree with the list's row keys.
    let listed: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT table_name, column_name, key_columns FROM orgkeeper.secret_columns()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(listed.len() >= 8, "{listed:?}");
    for (table, column, keys) in listed {
        let values: Vec<String> = (0..keys.len()).map(|i| format!("v{i}")).collect();
        let key: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        let item = serde_json::json!({ "table": table, "column": column, "key": key });
        assert_eq!(
            Place::from_item(&item),
            Some(Place::new(&table, &column, values.join("/"))),
            "{item}"
        );
    }

    // A column that holds no secret is refused by every entry point.
    for sql in [
        "SELECT orgkeeper.read_secret('org', 'name', '{\"id\": 1}')",
        "SELECT count(*) FROM orgkeeper.secrets_after('org', 'name', NULL, 10)",
        "SELECT count(*) FROM orgkeeper.swap_secrets('org', 'name', '[]')",
    ] {
        let err = sqlx::query(sql).execute(&db.pool).await.unwrap_err();
        assert_eq!(
            crate::support::db_error(&err),
            (
                "22023".to_string(),
                "org.name is not a column that holds an encrypted secret".to_string()
            ),
            "{sql}"
        );
    }
}

/// Every secret place of two organizations, named by the test.
async fn every_place_of_two_orgs(pool: &PgPool) -> Vec<Spot> {
    let mut spots = Vec::new();
    for name in ["Reach A", "Reach B"] {
        let (org, owner, action, secret, hook) = org_with_related_rows(pool, name).await;
        for column in [
            "llm_api_key",
            "llm_api_key_for_byor",
            "search_api_key",
            "sandbox_api_key",
        ] {
            spots.push(Spot::new("org", column, org));
        }
        for column in ["llm_api_key", "llm_api_key_for_byor"] {
            spots.push(Spot::new("org_member", column, format!("{org}/{owner}")));
        }
        spots.push(Spot::new("custom_secrets", "secret_value", secret));
        spots.push(Spot::new("gitlab_webhook", "webhook_secret", hook));
        spots.push(Spot::new(
            "pending_external_actions",
            "progress.key",
            action,
        ));
    }
    spots
}

/// The swaps `orgkeeper.replace_secrets` did not write, as `{table, column,
/// key}` items.
async fn not_swapped(pool: &PgPool, swaps: serde_json::Value) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('table', table_name, 'column', column_name, 'key', key)
           FROM orgkeeper.replace_secrets($1)",
    )
    .bind(swaps)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The `{table, column, key}` arguments naming a spot, its key from the
/// primary-key columns the database lists.
async fn key_of(pool: &PgPool, spot: &Spot) -> serde_json::Value {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT key_columns FROM orgkeeper.secret_columns() WHERE table_name = $1 AND column_name = $2",
    )
    .bind(spot.table)
    .bind(spot.column)
    .fetch_one(pool)
    .await
    .unwrap();
    let key: serde_json::Map<String, serde_json::Value> = columns
        .into_iter()
        .zip(spot.row.split('/'))
        .map(|(c, v)| (c, serde_json::json!(v)))
        .collect();
    serde_json::Value::Object(key)
}

#[tokio::test]
async fn the_daemon_reads_and_swaps_every_secret_place_by_its_key_and_refuses_any_other_key() {
    let db = TestDb::migrated().await;
    let spots = every_place_of_two_orgs(&db.pool).await;
    // The test covers every place the database lists (a new one fails here
    // until it is added above).
    let listed: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name, column_name FROM orgkeeper.secret_columns() ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut covered: Vec<(String, String)> = spots
        .iter()
        .map(|s| (s.table.to_string(), s.column.to_string()))
        .collect();
    covered.sort();
    covered.dedup();
    assert_eq!(covered, listed);
    for (i, spot) in spots.iter().enumerate() {
        spot.store(&db.pool, &format!("value-{i}")).await;
    }

    for (i, spot) in spots.iter().enumerate() {
        let key = key_of(&db.pool, spot).await;
        let read: Option<String> = sqlx::query_scalar("SELECT orgkeeper.read_secret($1, $2, $3)")
            .bind(spot.table)
            .bind(spot.column)
            .bind(&key)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(
            read.as_deref(),
            Some(format!("value-{i}").as_str()),
            "{spot:?}"
        );
        let item = serde_json::json!({ "table": spot.table, "column": spot.column, "key": key });
        let swap = |old: String| {
            let mut swap = item.clone();
            swap["old"] = old.into();
            swap["new"] = format!("new-{i}").into();
            not_swapped(&db.pool, serde_json::json!([swap]))
        };
        assert_eq!(
            swap("not the stored value".into()).await,
            std::slice::from_ref(&item),
            "{spot:?}"
        );
        assert!(swap(format!("value-{i}")).await.is_empty(), "{spot:?}");
    }
    // Each swap wrote its own place and nothing else.
    let expected: Vec<(Spot, String)> = {
        let mut v: Vec<_> = spots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), format!("new-{i}")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(every_ciphertext(&db.pool).await, expected);
    // All places in one call, in item order; a row that is gone reads NULL.
    let mut items = Vec::new();
    let mut values = Vec::new();
    for (i, spot) in spots.iter().enumerate() {
        let key = key_of(&db.pool, spot).await;
        items.push(serde_json::json!({ "table": spot.table, "column": spot.column, "key": key }));
        values.push(Some(format!("new-{i}")));
    }
    items.push(serde_json::json!({ "table": "custom_secrets", "column": "secret_value", "key": { "id": -1 } }));
    values.push(None);
    let read: Vec<(serde_json::Value, Option<String>)> =
        sqlx::query_as("SELECT item, value FROM orgkeeper.read_secrets($1)")
            .bind(serde_json::Value::Array(items.clone()))
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(read, items.into_iter().zip(values).collect::<Vec<_>>());

    // All places in one call: each row is written once with all of its
    // places (one new row version for an organization's four keys), and a
    // row with one value changed meanwhile is not written at all.
    let mut swaps = Vec::new();
    for (i, spot) in spots.iter().enumerate() {
        let key = key_of(&db.pool, spot).await;
        swaps.push(
            serde_json::json!({ "table": spot.table, "column": spot.column, "key": key,
                                       "old": format!("new-{i}"), "new": format!("newer-{i}") }),
        );
    }
    let stale = spots.iter().rposition(|s| s.table == "org").unwrap();
    swaps[stale]["old"] = "not the stored value".into();
    let tables = [
        "custom_secrets",
        "gitlab_webhook",
        "org",
        "org_member",
        "pending_external_actions",
        "users",
    ];
    let mut tx = db.pool.begin().await.unwrap();
    let mut updates = Vec::new();
    for table in tables {
        updates.push(table_counter(&mut tx, table, "n_tup_upd").await);
    }
    let unwritten: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT to_jsonb(r) FROM orgkeeper.replace_secrets($1) r")
            .bind(serde_json::Value::Array(swaps.clone()))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    for (table, before) in tables.iter().zip(updates.iter_mut()) {
        *before = table_counter(&mut tx, table, "n_tup_upd").await - *before;
    }
    let org_places = spots.iter().filter(|s| s.table == "org").count() / 2;
    assert_eq!(unwritten.len(), org_places, "{unwritten:?}");
    for u in &unwritten {
        assert_eq!(u["table_name"], "org");
        assert_eq!(u["key"], swaps[stale]["key"]);
    }
    tx.commit().await.unwrap();
    // Two rows per table, one organization's row stale; nothing else written.
    assert_eq!(updates, [2, 2, 1, 2, 2, 0], "{tables:?}");
    let expected: Vec<(Spot, String)> = {
        let mut v: Vec<_> = spots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let written = !(s.table == "org" && s.row == spots[stale].row);
                (
                    s.clone(),
                    format!("{}-{i}", if written { "newer" } else { "new" }),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(every_ciphertext(&db.pool).await, expected);

    // A batch that names a place twice, or lacks a value, or is no array, is
    // refused and writes nothing.
    let twice = serde_json::json!([swaps[0], swaps[0]]);
    // The same row, its uuid key written in capitals: still the same place.
    let org = spots.iter().position(|s| s.table == "org").unwrap();
    let mut shouted = swaps[org].clone();
    shouted["key"]["id"] = spots[org].row.to_uppercase().into();
    let twice_in_two_spellings = serde_json::json!([swaps[org], shouted]);
    let mut no_old = swaps[0].clone();
    no_old.as_object_mut().unwrap().remove("old");
    for (swaps, code, says) in [
        (twice, "22023", "times"),
        (twice_in_two_spellings, "22023", "times"),
        (
            serde_json::json!([no_old]),
            "22004",
            "lacks its old or its new ciphertext",
        ),
        (
            serde_json::json!({}),
            "22023",
            "takes a JSON array of swaps",
        ),
    ] {
        let err = sqlx::query("SELECT * FROM orgkeeper.replace_secrets($1)")
            .bind(&swaps)
            .execute(&db.pool)
            .await
            .unwrap_err();
        let (got, message) = crate::support::db_error(&err);
        assert_eq!(got, code, "{swaps}: {message}");
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(every_ciphertext(&db.pool).await, expected);

    // A key that is not exactly the primary key is refused, naming the key
    // columns, and changes nothing: part of a composite key (which would
    // match every member of the organization), an extra column, the wrong
    // column, no key.
    let member = spots.iter().find(|s| s.table == "org_member").unwrap();
    let org_id = member.row.split('/').next().unwrap();
    for (table, column, key) in [
        (
            "org_member",
            "llm_api_key",
            serde_json::json!({ "org_id": org_id }),
        ),
        (
            "org",
            "search_api_key",
            serde_json::json!({ "id": org_id, "name": "x" }),
        ),
        (
            "org",
            "search_api_key",
            serde_json::json!({ "org_id": org_id }),
        ),
        ("custom_secrets", "secret_value", serde_json::json!({})),
        ("custom_secrets", "secret_value", serde_json::Value::Null),
    ] {
        let columns = if table == "org_member" {
            "org_id, user_id"
        } else {
            "id"
        };
        for sql in [
            "SELECT orgkeeper.read_secret($1, $2, $3)::text",
            "SELECT count(*)::text FROM orgkeeper.replace_secrets(jsonb_build_array(jsonb_build_object(
                 'table', $1::text, 'column', $2::text, 'key', $3::jsonb, 'old', 'new-0', 'new', 'x')))",
            "SELECT value FROM orgkeeper.read_secrets(jsonb_build_array(
                 jsonb_build_object('table', $1::text, 'column', $2::text, 'key', $3::jsonb)))",
        ] {
            let err = sqlx::query_scalar::<_, Option<String>>(sql)
                .bind(table)
                .bind(column)
                .bind(&key)
                .fetch_one(&db.pool)
                .await
                .unwrap_err();
            let (code, message) = crate::support::db_error(&err);
            assert_eq!(code, "22023", "{sql} {key}: {message}");
            assert!(
                message.ends_with(&format!("the key of {table}.{column} is {{{columns}}}")),
                "{message}"
            );
        }
    }
    assert_eq!(every_ciphertext(&db.pool).await, expected);

    // A place added to secret_columns without applying the library again
    // (which generates both functions) is refused, never read as NULL or
    // reported as written.
    sqlx::query(
        "CREATE OR REPLACE FUNCTION orgkeeper.secret_columns()
         RETURNS TABLE (table_name text, column_name text, key_columns text[])
         LANGUAGE sql STABLE AS $$ VALUES ('org', 'contact_email', ARRAY['id']) $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for sql in [
        "SELECT orgkeeper.read_secret('org', 'contact_email', jsonb_build_object('id', $1))::text",
        "SELECT count(*)::text FROM orgkeeper.replace_secrets(jsonb_build_array(jsonb_build_object(
             'table', 'org', 'column', 'contact_email', 'key', jsonb_build_object('id', $1), 'old', 'a', 'new', 'b')))",
        "SELECT value FROM orgkeeper.read_secrets(jsonb_build_array(jsonb_build_object(
             'table', 'org', 'column', 'contact_email', 'key', jsonb_build_object('id', $1))))",
    ] {
        let err = sqlx::query_scalar::<_, Option<String>>(sql)
            .bind(org_id)
            .fetch_one(&db.pool)
            .await
            .unwrap_err();
        let (code, message) = crate::support::db_error(&err);
        assert_eq!(code, "55000", "{sql}: {message}");
        assert!(message.contains("org.contact_email is a secret column"), "{message}");
    }
}

#[tokio::test]
async fn the_daemon_role_runs_the_rotation() {
    let db = TestDb::migrated().await;
    let (old_key, new_key) = (generate_key(), generate_key());
    let (org, owner, action, secret, hook) = org_with_related_rows(&db.pool, "Role").await;
    let spots = [
        Spot::new("org", "search_api_key", org),
        Spot::new("org_member", "llm_api_key", format!("{org}/{owner}")),
        Spot::new("custom_secrets", "secret_value", secret),
        Spot::new("gitlab_webhook", "webhook_secret", hook),
        Spot::new("pending_external_actions", "progress.key", action),
    ];
    for spot in &spots {
        spot.store(&db.pool, &ok1(&old_key, "sk-role")).await;
    }
    // Every session of this pool is the daemon's role (no superuser).
    let daemon_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET ROLE orgkeeper_daemon")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&db.url)
        .await
        .unwrap();
    let ring = Keyring::new(&new_key, &[old_key], None).unwrap();
    let report = run(&daemon_pool, &ring, 2, false).await;
    assert_eq!(report.rotated, spots.len() as u64, "{report:?}");
    assert!(report.complete());
    for (spot, value) in every_ciphertext(&db.pool).await {
        assert_eq!(
            ring.decrypt(&spot.place(), &value).unwrap().expose_secret(),
            "sk-role",
            "{spot:?}"
        );
        assert!(ring.is_current(&value));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_key_rotation_in_flight_still_completes_after_its_key_was_re_encrypted() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let (old_key, new_key) = (generate_key(), generate_key());
    let d = TestDaemon::start(daemon_config(
        &db.url,
        &sim,
        &old_key,
        daemon_settings("old", LONG),
    ));
    let org = insert_orgs(&db.pool, "Keys", 1).await[0];
    wait_until(LONG, "org active", || active_is(&db.pool, 1)).await;
    d.stop().await;
    let owner: Uuid = sqlx::query_scalar("SELECT created_by FROM orgkeeper.org WHERE id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let member = Spot::new("org_member", "llm_api_key", format!("{org}/{owner}"));
    let ring = Keyring::new(&new_key, std::slice::from_ref(&old_key), None).unwrap();
    let stored_key = |pool: PgPool| async move {
        every_ciphertext(&pool)
            .await
            .into_iter()
            .find(|(s, _)| s.table == "org_member")
            .unwrap()
            .1
    };
    let first = ring
        .decrypt(&member.place(), &stored_key(db.pool.clone()).await)
        .unwrap();

    // A LiteLLM key rotation (orgkeeper keys rotate) noted the member's
    // ciphertext, then stalled: the proxy cannot make the new key yet.
    sim.set_faults(orgkeeper::litellm::Faults {
        fail: vec![("key/generate".into(), 503)],
        ..Default::default()
    });
    let daemon = |worker: &str| {
        let mut config = daemon_config(&db.url, &sim, &new_key, daemon_settings(worker, LONG));
        config.keyring = Keyring::new(&new_key, std::slice::from_ref(&old_key), None).unwrap();
        TestDaemon::start(config)
    };
    let d = daemon("new");
    sqlx::query("SELECT orgkeeper.rotate_member_keys($1)")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until(
        LONG,
        "the key rotation noted the old key and stalled",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT progress ? 'old' AND progress ? 'key' AND attempts >= 2
               FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.rotate_key'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    d.stop().await;

    // Meanwhile the secret key is rotated: the member's ciphertext changes,
    // the key it holds does not.
    let report = run(&db.pool, &ring, 500, false).await;
    assert!(report.complete() && report.rotated >= 1, "{report:?}");
    assert_eq!(
        ring.decrypt(&member.place(), &stored_key(db.pool.clone()).await)
            .unwrap()
            .expose_secret(),
        first.expose_secret()
    );

    sim.set_faults(orgkeeper::litellm::Faults::default());
    let d = daemon("after");
    wait_until(LONG, "the key rotation finished", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT status IN ('done', 'failed', 'compensated', 'cancelled')
               FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.rotate_key'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    })
    .await;
    d.stop().await;
    let (status, result): (String, Option<serde_json::Value>) = sqlx::query_as(
        "SELECT status, result FROM orgkeeper.pending_external_actions WHERE kind = 'litellm.rotate_key'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "done", "{result:?}");
    let now = stored_key(db.pool.clone()).await;
    assert!(ring.is_current(&now));
    let second = ring.decrypt(&member.place(), &now).unwrap();
    assert_ne!(
        second.expose_secret(),
        first.expose_secret(),
        "rotated: {result:?}"
    );
    assert!(
        sim.has_key(second.expose_secret()),
        "the member's stored key works at LiteLLM: {result:?}"
    );
    assert!(!sim.has_key(first.expose_secret()), "the old key is gone");
}

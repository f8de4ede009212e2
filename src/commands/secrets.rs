//! `orgkeeper secrets rotate`: re-encrypts every ciphertext at rest that is
//! not version 2 under the current key (`ok1` values, and `ok2` values
//! sealed by an old key) as `ok2` under `ORGKEEPER_SECRET_KEY`, bound to its
//! place.
//!
//! The list of secret columns is the database's
//! (`orgkeeper.secret_columns()`, `sql/secrets.sql`); this module never
//! names a table. Each column is read in keyset pages by primary key
//! (`orgkeeper.secrets_after`), and each page is written back in one
//! compare-and-set statement (`orgkeeper.swap_secrets`): a value changed
//! since it was read is left alone and counted, for the next run. Every
//! page commits on its own, so an interrupted run loses nothing and a rerun
//! finds only what is left.
//!
//! Every `ok` value is decrypted at its place, current ones included, so a
//! run also proves that nothing stored is unreadable or was copied from
//! another row. Legacy (pre-organization) values are counted and left for
//! user migration, which re-encrypts them.

use crate::config::{DatabaseArgs, SecretArgs};
use crate::secrets::{Keyring, Place, SecretError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sqlx::PgPool;
use std::fmt;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Exit status of a run that left values changed concurrently for the next
/// run (`EX_TEMPFAIL`).
const EXIT_RUN_AGAIN: u8 = 75;

/// What `orgkeeper secrets` can do.
#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Re-encrypt every ciphertext at rest under the current key (ok1 values, ok2 values under an old key)
    #[command(long_about = ROTATE_HELP)]
    Rotate(RotateArgs),
}

const ROTATE_HELP: &str = "\
Re-encrypt every ciphertext at rest under the current key.

Every secret column the database lists (SELECT * FROM orgkeeper.secret_columns()) is read \
in batches by primary key. Each value in orgkeeper's format is decrypted at its place \
(ok2 with the key its key id names, from ORGKEEPER_SECRET_KEY or ORGKEEPER_OLD_SECRET_KEYS; \
ok1 with no associated data); one that is not ok2 under ORGKEEPER_SECRET_KEY is re-encrypted \
as ok2 bound to its place (orgkeeper:<table>.<column>:<row key>) and written back only if the \
row still holds the value that was read. Legacy (pre-organization) values are skipped: user \
migration re-encrypts them.

Each batch commits on its own: an interrupted run can simply be run again, and a rerun finds \
only what is left. A value that cannot be decrypted (unknown key id, damaged, or copied from \
another row) is reported naming its row and left unchanged; the rest continues.

To rotate: set the new key as ORGKEEPER_SECRET_KEY and the old one in ORGKEEPER_OLD_SECRET_KEYS \
for the daemon and this command, restart the daemon, run this command until it exits 0, then \
drop the old key.

Exit status: 0 every ciphertext is current (or, with --dry-run, would be); 1 some value cannot \
be decrypted (each is named on stderr); 2 a setting is missing or malformed; 75 some rows \
changed while they were being rotated and were left alone: run again.";

/// Settings of `orgkeeper secrets rotate`.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    secrets: SecretArgs,
    /// Rows read and written back per statement (keyset pagination by primary key; each batch is one transaction)
    #[arg(long, env = "ORGKEEPER_ROTATE_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Only count what would be rotated (and check that everything decrypts); write nothing
    #[arg(long, env = "ORGKEEPER_ROTATE_DRY_RUN")]
    dry_run: bool,
}

/// How to run a rotation.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rows per page (read and compare-and-set).
    pub batch: u32,
    /// Count only; write nothing.
    pub dry_run: bool,
}

/// A stored value that cannot be decrypted at its place.
#[derive(Debug, PartialEq, Eq)]
pub struct Undecryptable {
    /// Where it is stored.
    pub place: Place,
    /// Why it does not decrypt (never contains the secret).
    pub error: SecretError,
}

impl fmt::Display for Undecryptable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.error)
    }
}

/// What a rotation found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Values re-encrypted under the current key (with `dry_run`: that would be).
    pub rotated: u64,
    /// Values already ok2 under the current key (and decrypting at their place).
    pub already_current: u64,
    /// Legacy (pre-organization) values, left for user migration.
    pub legacy_skipped: u64,
    /// Values changed between read and write, left alone for the next run.
    pub changed_concurrently: u64,
    /// Values that cannot be decrypted at their place; nothing was written for them.
    pub undecryptable: Vec<Undecryptable>,
}

impl RotationReport {
    /// Whether every orgkeeper ciphertext seen is now current under the current key.
    pub fn complete(&self) -> bool {
        self.undecryptable.is_empty() && self.changed_concurrently == 0
    }
}

/// Runs `orgkeeper secrets rotate`.
pub async fn run(command: SecretsCommand) -> anyhow::Result<ExitCode> {
    let SecretsCommand::Rotate(args) = command;
    let keyring = args.secrets.keyring()?;
    let url = args.database.url()?;
    let rotation = Rotation {
        batch: args.batch,
        dry_run: args.dry_run,
    };
    let pool = crate::db::connect(&url, 2).await?;
    crate::db::check_migrated(&pool).await?;

    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ciphertexts  {per_sec}  ETA {eta}  {msg}",
        )?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let clock = Instant::now();
    let outcome = tokio::select! {
        report = rotate(&pool, &keyring, rotation, &bar) => Some(report?),
        _ = tokio::signal::ctrl_c() => None,
    };
    bar.finish_and_clear();
    let Some(report) = outcome else {
        println!("interrupted: the batches written so far stay rotated; run the command again to continue");
        return Ok(ExitCode::from(130));
    };
    print!(
        "{}",
        summary(&report, rotation, keyring.current_key_id(), clock.elapsed())
    );
    for failure in &report.undecryptable {
        eprintln!("error: {failure}");
    }
    Ok(if !report.undecryptable.is_empty() {
        ExitCode::from(1)
    } else if report.changed_concurrently > 0 {
        ExitCode::from(EXIT_RUN_AGAIN)
    } else {
        ExitCode::SUCCESS
    })
}

/// The end-of-run summary, one figure per line.
fn summary(report: &RotationReport, rotation: Rotation, key_id: &str, took: Duration) -> String {
    let mut out = if rotation.dry_run {
        format!(
            "dry run: {} ciphertext(s) would be re-encrypted under key {key_id}; nothing was written\n",
            report.rotated
        )
    } else {
        format!(
            "re-encrypted {} ciphertext(s) under key {key_id} in {:.1} s (batches of {})\n",
            report.rotated,
            took.as_secs_f64(),
            rotation.batch
        )
    };
    let rotated_label = if rotation.dry_run {
        "to rotate"
    } else {
        "rotated"
    };
    for (label, n) in [
        (rotated_label, report.rotated),
        ("already current", report.already_current),
        ("legacy, skipped", report.legacy_skipped),
        ("changed concurrently", report.changed_concurrently),
        ("undecryptable", report.undecryptable.len() as u64),
    ] {
        out.push_str(&format!("  {label:<22}{n:>10}\n"));
    }
    if report.legacy_skipped > 0 {
        out.push_str(
            "legacy values are re-encrypted by user migration (orgkeeper users migrate)\n",
        );
    }
    if report.changed_concurrently > 0 {
        out.push_str("values changed while being rotated were left alone: run the command again\n");
    }
    if !report.undecryptable.is_empty() {
        out.push_str("undecryptable values were left unchanged; each is named on stderr\n");
    }
    out
}

/// Walks every secret column the database lists and re-encrypts what is
/// not current (module doc). `bar` gets the number of stored values as its
/// length and advances per value read.
pub async fn rotate(
    pool: &PgPool,
    keyring: &Keyring,
    rotation: Rotation,
    bar: &ProgressBar,
) -> anyhow::Result<RotationReport> {
    let columns: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT table_name, column_name, stored FROM orgkeeper.secret_inventory()")
            .fetch_all(pool)
            .await?;
    bar.set_length(columns.iter().map(|(_, _, n)| *n as u64).sum());
    let mut report = RotationReport::default();
    for (table, column, _) in &columns {
        bar.set_message(format!("{table}.{column}"));
        let mut after: Option<Vec<String>> = None;
        loop {
            let page: Vec<(Vec<String>, String)> = sqlx::query_as(
                "SELECT row_key, value FROM orgkeeper.secrets_after($1, $2, $3, $4)",
            )
            .bind(table)
            .bind(column)
            .bind(&after)
            .bind(rotation.batch as i32)
            .fetch_all(pool)
            .await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let swaps = reencrypt_page(keyring, table, column, &page, &mut report);
            let tried = swaps.len() as u64;
            if rotation.dry_run || swaps.is_empty() {
                report.rotated += tried;
            } else {
                let written: Vec<Vec<String>> =
                    sqlx::query_scalar("SELECT row_key FROM orgkeeper.swap_secrets($1, $2, $3)")
                        .bind(table)
                        .bind(column)
                        .bind(serde_json::Value::Array(swaps))
                        .fetch_all(pool)
                        .await?;
                report.rotated += written.len() as u64;
                report.changed_concurrently += tried - written.len() as u64;
            }
            bar.inc(page.len() as u64);
            if page.len() < rotation.batch as usize {
                break;
            }
        }
    }
    Ok(report)
}

/// Classifies one page's values and returns the compare-and-set swaps for
/// those to re-encrypt: `{"row_key", "old_value", "new_value"}`.
fn reencrypt_page(
    keyring: &Keyring,
    table: &str,
    column: &str,
    page: &[(Vec<String>, String)],
    report: &mut RotationReport,
) -> Vec<serde_json::Value> {
    let mut swaps = Vec::new();
    for (row_key, value) in page {
        if !Keyring::is_orgkeeper_format(value) {
            report.legacy_skipped += 1;
            continue;
        }
        let place = Place::new(table, column, row_key.join("/"));
        match keyring.decrypt(&place, value) {
            Err(error) => report.undecryptable.push(Undecryptable { place, error }),
            Ok(_) if keyring.is_current(value) => report.already_current += 1,
            Ok(plain) => swaps.push(json!({
                "row_key": row_key,
                "old_value": value,
                "new_value": keyring.encrypt(&place, &plain),
            })),
        }
    }
    swaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::generate_key;
    use secrecy::{ExposeSecret, SecretString};

    #[test]
    fn a_page_is_sorted_into_rotations_current_legacy_and_undecryptable_values() {
        let old = generate_key();
        let old_ring = Keyring::new(&old, &[], None).unwrap();
        let ring = Keyring::new(&generate_key(), &[old], None).unwrap();
        let place = |row: &str| Place::new("custom_secrets", "secret_value", row);
        let secret = SecretString::from("sk-rotate-me");
        let page = vec![
            (vec!["1".into()], old_ring.encrypt(&place("1"), &secret)),
            (vec!["2".into()], ring.encrypt(&place("2"), &secret)),
            (vec!["3".into()], "gAAAAlegacy".to_string()),
            (vec!["4".into()], ring.encrypt(&place("1"), &secret)),
        ];
        let mut report = RotationReport::default();
        let swaps = reencrypt_page(&ring, "custom_secrets", "secret_value", &page, &mut report);
        assert_eq!(swaps.len(), 1);
        assert_eq!(swaps[0]["row_key"], json!(["1"]));
        assert_eq!(swaps[0]["old_value"], json!(page[0].1));
        let new = swaps[0]["new_value"].as_str().unwrap();
        assert!(ring.is_current(new));
        assert_eq!(
            ring.decrypt(&place("1"), new).unwrap().expose_secret(),
            "sk-rotate-me"
        );
        assert_eq!(
            (report.already_current, report.legacy_skipped),
            (1, 1),
            "{report:?}"
        );
        assert_eq!(report.undecryptable.len(), 1);
        assert_eq!(
            report.undecryptable[0].to_string(),
            format!(
                "custom_secrets.secret_value of row 4: ciphertext does not belong at {} (copied from another row or column, or damaged)",
                place("4")
            )
        );
        assert!(!report.complete());
    }
}

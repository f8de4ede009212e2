//! `orgkeeper keys …`: members' LiteLLM keys — check them, replace them.
//! Both run as outbox actions performed by the daemon (`orgkeeper listen`),
//! so the check is exactly the one user migration makes.

use crate::outbox::{ActionKind, ActionStatus};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::{PgPool, Row};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Commands on members' LiteLLM keys.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Ask the proxy whether members' keys still work (GET /v1/models with each
    /// key; only 401/403 count as invalid) and print a table; exit 1 when one is invalid
    Verify {
        /// Only this organization's members
        #[arg(
            long,
            env = "ORGKEEPER_ORG",
            conflicts_with = "all",
            required_unless_present = "all"
        )]
        org: Option<Uuid>,
        /// Every active organization's members
        #[arg(long)]
        all: bool,
        /// How long to wait for the daemon to perform the checks, in seconds
        #[arg(long, env = "ORGKEEPER_WAIT_SECS", default_value_t = 120)]
        wait_secs: u64,
    },
    /// Replace members' LiteLLM keys: the daemon stores a new random key for
    /// each member first, then deletes the old one at LiteLLM
    Rotate {
        /// The organization whose members' keys to replace
        #[arg(long, env = "ORGKEEPER_ORG")]
        org: Uuid,
        /// Only this member's key
        #[arg(long, env = "ORGKEEPER_USER")]
        user: Option<Uuid>,
    },
}

/// Runs a keys command. A refusal by the database prints its message,
/// SQLSTATE and hint, and returns exit code 1.
pub async fn run(pool: &PgPool, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Verify { org, wait_secs, .. } => {
            let enqueued =
                sqlx::query_scalar::<_, Vec<i64>>("SELECT orgkeeper.verify_member_keys($1)")
                    .bind(org)
                    .fetch_one(pool)
                    .await;
            match enqueued {
                Ok(ids) => verify_report(pool, &ids, Duration::from_secs(wait_secs)).await,
                Err(err) => refused(err),
            }
        }
        KeysCommand::Rotate { org, user } => {
            let enqueued =
                sqlx::query_scalar::<_, Vec<i64>>("SELECT orgkeeper.rotate_member_keys($1, $2)")
                    .bind(org)
                    .bind(user)
                    .fetch_one(pool)
                    .await;
            match enqueued {
                Ok(ids) => {
                    println!(
                        "{} key rotation(s) enqueued for organization {org} (actions {}); \
                         the daemon performs them — follow with: orgkeeper actions list --kind {} --org {org}",
                        ids.len(),
                        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", "),
                        ActionKind::RotateKey,
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => refused(err),
            }
        }
    }
}

/// A refusal by the database printed (exit 1); other failures returned.
fn refused(err: sqlx::Error) -> anyhow::Result<ExitCode> {
    match crate::commands::org::refusal(&err) {
        Some(text) => {
            eprintln!("{text}");
            Ok(ExitCode::from(1))
        }
        None => Err(err.into()),
    }
}

/// Waits (with a progress bar) for the daemon to finish the check actions
/// `ids`, then prints one line per member: org, user, verdict.
async fn verify_report(pool: &PgPool, ids: &[i64], wait: Duration) -> anyhow::Result<ExitCode> {
    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::with_draw_target(Some(ids.len() as u64), ProgressDrawTarget::stdout())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} keys checked",
    )?);
    let deadline = Instant::now() + wait;
    let rows = loop {
        let rows = sqlx::query(
            "SELECT org_id, user_id, status, result, last_error
               FROM orgkeeper.pending_external_actions WHERE id = ANY ($1) ORDER BY org_id, user_id",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?;
        let finished = rows.iter().filter(|r| is_finished(r)).count();
        bar.set_position(finished as u64);
        if finished == rows.len() {
            break rows;
        }
        if Instant::now() >= deadline {
            bar.abandon();
            eprintln!(
                "error: {} of {} checks are still waiting after {}s: is the daemon (orgkeeper listen) running? \
                 The actions stay queued; see: orgkeeper actions list --kind {}",
                rows.len() - finished,
                rows.len(),
                wait.as_secs(),
                ActionKind::VerifyKey,
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    let mut invalid = 0;
    println!("{:<36}  {:<36}  verdict", "organization", "user");
    for row in &rows {
        let result: Option<serde_json::Value> = row.get("result");
        let status: String = row.get("status");
        let done = status == ActionStatus::Done.as_str();
        let verdict = match (done, result.as_ref()) {
            (true, Some(r)) if r["valid"] == true => "valid".to_string(),
            (true, Some(r)) if r["valid"] == false => {
                invalid += 1;
                "INVALID: the proxy refuses it (replace it: orgkeeper keys rotate)".to_string()
            }
            (true, Some(r)) if r["skipped"].is_string() => format!("skipped: {}", r["skipped"]),
            (true, _) => "inconclusive: the proxy did not answer 2xx, 401 or 403".to_string(),
            (false, _) => format!(
                "check {status}: {}",
                row.get::<Option<String>, _>("last_error")
                    .unwrap_or_default()
            ),
        };
        println!(
            "{:<36}  {:<36}  {verdict}",
            row.get::<Uuid, _>("org_id"),
            row.get::<Uuid, _>("user_id")
        );
    }
    println!("{} keys checked, {invalid} invalid", rows.len());
    Ok(if invalid > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether an outbox action row reached a terminal status.
fn is_finished(row: &sqlx::postgres::PgRow) -> bool {
    row.get::<String, _>("status")
        .parse::<ActionStatus>()
        .is_ok_and(ActionStatus::is_terminal)
}

//! `orgkeeper actions …`: look into the outbox and act on stuck actions.

use crate::outbox::{ActionKind, ActionStatus};
use clap::Subcommand;
use sqlx::{PgPool, Row};
use std::process::ExitCode;

/// Operator commands on outbox actions.
#[derive(Debug, Clone, Subcommand)]
pub enum ActionsCommand {
    /// List recent actions (newest first)
    List {
        /// Only actions in this status (pending, running, done, failed, compensating, compensated, cancelled)
        #[arg(long)]
        status: Option<ActionStatus>,
        /// Only actions of this kind, e.g. litellm.provision_org
        #[arg(long)]
        kind: Option<ActionKind>,
        /// Only actions of this organization
        #[arg(long)]
        org: Option<uuid::Uuid>,
        /// How many rows
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Show one action with its payload, progress, result and error history
    Show {
        /// The action id
        id: i64,
    },
    /// Put a failed, compensated or cancelled action back to pending
    Retry {
        /// The action id
        id: i64,
    },
    /// Give up on a pending or failed action
    Cancel {
        /// The action id
        id: i64,
    },
}

/// Runs an actions command.
pub async fn run(pool: &PgPool, command: ActionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ActionsCommand::List {
            status,
            kind,
            org,
            limit,
        } => {
            let rows = sqlx::query(
                "SELECT id, kind, status, attempts, coalesce(org_id::text, '-') AS org,
                        to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS') AS updated,
                        coalesce(left(last_error, 60), '') AS error
                   FROM orgkeeper.pending_external_actions
                  WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2)
                    AND ($3::uuid IS NULL OR org_id = $3)
                  ORDER BY id DESC LIMIT $4",
            )
            .bind(status.map(ActionStatus::as_str))
            .bind(kind.map(ActionKind::as_str))
            .bind(org)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.get::<i64, _>("id").to_string(),
                        r.get("kind"),
                        r.get("status"),
                        r.get::<i32, _>("attempts").to_string(),
                        r.get("org"),
                        r.get("updated"),
                        r.get("error"),
                    ]
                })
                .collect();
            print_table(
                &[
                    "id",
                    "kind",
                    "status",
                    "attempts",
                    "org",
                    "updated",
                    "last error",
                ],
                &table,
            );
            Ok(ExitCode::SUCCESS)
        }
        ActionsCommand::Show { id } => {
            let row: Option<serde_json::Value> = sqlx::query_scalar(
                "SELECT to_jsonb(a) - 'subject' FROM orgkeeper.pending_external_actions a WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(v) => {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("error: action {id} does not exist (list them with: orgkeeper actions list)");
                    Ok(ExitCode::from(1))
                }
            }
        }
        ActionsCommand::Retry { id } => {
            sql_command(
                pool,
                "SELECT orgkeeper.retry_action($1)",
                id,
                "back to pending",
            )
            .await
        }
        ActionsCommand::Cancel { id } => {
            sql_command(
                pool,
                "SELECT orgkeeper.cancel_action($1)",
                id,
                ActionStatus::Cancelled.as_str(),
            )
            .await
        }
    }
}

async fn sql_command(
    pool: &PgPool,
    sql: &'static str,
    id: i64,
    done: &str,
) -> anyhow::Result<ExitCode> {
    match sqlx::query(sql).bind(id).execute(pool).await {
        Ok(_) => {
            println!("action {id}: {done}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report_db_error(&e)),
    }
}

/// Prints a database refusal as `error: message (SQLSTATE x)` plus its hint; exit code 1.
pub fn report_db_error(error: &sqlx::Error) -> ExitCode {
    match error {
        sqlx::Error::Database(e) => {
            let code = e.code().map(|c| c.to_string()).unwrap_or_default();
            eprintln!("error: {} (SQLSTATE {code})", e.message());
            if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(hint) = pg.hint() {
                    eprintln!("hint: {hint}");
                }
            }
        }
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(1)
}

/// Prints rows as an aligned text table.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

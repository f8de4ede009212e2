//! `orgkeeper policy …`: who may create organizations — the allowed owner
//! emails and email domains of `orgkeeper.org_creation_policy` (empty =
//! everyone). The database applies it on every organization insert
//! (`orgkeeper.org_admit`); these commands only edit and show it, as a DBA
//! would with `orgkeeper.policy_allow` / `policy_remove`.

use clap::Subcommand;
use sqlx::PgPool;
use std::process::ExitCode;

/// Commands on the org-creation policy.
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Allow one owner email address to create organizations (its verified owner only)
    AllowEmail {
        /// The address (trimmed, lower-cased)
        email: String,
        /// Who adds it, recorded as added_by (default: "orgkeeper policy (<database role>)")
        #[arg(long)]
        by: Option<String>,
    },
    /// Allow every verified address of an email domain to create organizations
    AllowDomain {
        /// The domain, e.g. example.com (exact: subdomains are separate entries)
        domain: String,
        /// Who adds it, recorded as added_by (default: "orgkeeper policy (<database role>)")
        #[arg(long)]
        by: Option<String>,
    },
    /// Remove an allowed email (anything with an @) or domain; removing the last entry lets everyone create again
    Remove {
        /// The email address or domain
        value: String,
    },
    /// Show the allowed emails and domains, who added them and when
    List,
}

/// Runs a policy command. A refusal by the database prints its message,
/// SQLSTATE and hint, and returns exit code 1.
pub async fn run(pool: &PgPool, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match execute(pool, command).await {
        Ok(code) => Ok(code),
        Err(err) => match crate::commands::org::refusal(&err) {
            Some(text) => {
                eprintln!("{text}");
                Ok(ExitCode::from(1))
            }
            None => Err(err.into()),
        },
    }
}

async fn execute(pool: &PgPool, command: PolicyCommand) -> Result<ExitCode, sqlx::Error> {
    match command {
        PolicyCommand::AllowEmail { email, by } => allow(pool, "email", &email, by).await,
        PolicyCommand::AllowDomain { domain, by } => allow(pool, "domain", &domain, by).await,
        PolicyCommand::Remove { value } => {
            let kind = if value.contains('@') {
                "email"
            } else {
                "domain"
            };
            let removed: bool = sqlx::query_scalar("SELECT orgkeeper.policy_remove($1, $2)")
                .bind(kind)
                .bind(&value)
                .fetch_one(pool)
                .await?;
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orgkeeper.org_creation_policy")
                    .fetch_one(pool)
                    .await?;
            let value = value.trim().to_lowercase();
            if !removed {
                eprintln!("{kind} {value} was not in the org-creation policy");
                return Ok(ExitCode::from(1));
            }
            println!("removed {kind} {value} from the org-creation policy");
            if left == 0 {
                println!("the policy is now empty: everyone may create organizations");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::List => {
            let rows: Vec<(String, String, String, chrono::DateTime<chrono::Utc>)> =
                sqlx::query_as(
                    "SELECT kind, value, added_by, added_at FROM orgkeeper.org_creation_policy
                      ORDER BY kind, value",
                )
                .fetch_all(pool)
                .await?;
            if rows.is_empty() {
                println!("the org-creation policy is empty: everyone may create organizations");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<7} {:<40} {:<25} added by", "kind", "value", "added at");
            for (kind, value, added_by, added_at) in rows {
                println!(
                    "{kind:<7} {value:<40} {:<25} {added_by}",
                    added_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn allow(
    pool: &PgPool,
    kind: &str,
    value: &str,
    by: Option<String>,
) -> Result<ExitCode, sqlx::Error> {
    let by = match by {
        Some(by) => by,
        None => {
            let role: String = sqlx::query_scalar("SELECT session_user::text")
                .fetch_one(pool)
                .await?;
            format!("orgkeeper policy ({role})")
        }
    };
    let first: bool =
        sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM orgkeeper.org_creation_policy)")
            .fetch_one(pool)
            .await?;
    let added: bool = sqlx::query_scalar("SELECT orgkeeper.policy_allow($1, $2, $3)")
        .bind(kind)
        .bind(value)
        .bind(&by)
        .fetch_one(pool)
        .await?;
    let value = value.trim().to_lowercase();
    if added {
        println!("allowed {kind} {value} to create organizations");
        if first {
            println!("the policy is now in force: only allowed emails and domains may create team organizations");
        }
    } else {
        println!("{kind} {value} was already allowed");
    }
    Ok(ExitCode::SUCCESS)
}

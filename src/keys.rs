//! `orgkeeper keys …`: members' LiteLLM keys.

use clap::Subcommand;
use sqlx::PgPool;
use std::process::ExitCode;
use uuid::Uuid;

/// Commands on members' LiteLLM keys.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
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
                         the daemon performs them — follow with: orgkeeper actions list --kind litellm.rotate_key --org {org}",
                        ids.len(),
                        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => match crate::orgs::refusal(&err) {
                    Some(text) => {
                        eprintln!("{text}");
                        Ok(ExitCode::from(1))
                    }
                    None => Err(err.into()),
                },
            }
        }
    }
}

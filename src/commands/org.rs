//! `orgkeeper org …`: organization management from the command line.
//!
//! Every subcommand calls the SQL functions of `sql/members.sql` and
//! `sql/invitations.sql` in one transaction that first names the acting user
//! (`SET LOCAL orgkeeper.user_id`), so the command line obeys exactly the
//! rules applications do, whichever database role it connects as. A refusal
//! prints the database's message, SQLSTATE and hint and exits with status 1.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgPool, Postgres, Transaction};
use std::io::BufRead;
use std::process::ExitCode;
use uuid::Uuid;

/// Organization management subcommands. `--as` names the acting user (the
/// rules are checked for them); organizations are given by id or by the
/// exact name of one the acting user belongs to.
#[derive(Debug, clap::Subcommand)]
pub enum OrgCommand {
    /// List the organizations a user belongs to.
    List {
        /// The user whose organizations to list.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
    },
    /// Create a team organization owned by the acting user.
    Create {
        /// The user who creates (and owns) the organization.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// Its name (unique, case-insensitively).
        name: String,
    },
    /// Rename an organization (owners and admins).
    Rename {
        /// The acting user.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// The new name.
        new_name: String,
    },
    /// Delete a team organization (owners only): billing records are kept and
    /// detached, the organization's own data is deleted, its LiteLLM team is
    /// removed by the daemon.
    Delete {
        /// The acting user.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// Confirm the deletion; nothing is deleted without it.
        #[arg(long)]
        yes: bool,
    },
    /// Hand ownership to an existing active member; the acting owner takes their previous role (a swap) unless --keep-as says otherwise.
    Transfer {
        /// The acting owner.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// The member who becomes the owner.
        #[arg(long = "to", value_name = "USER")]
        new_owner: Uuid,
        /// The role the acting owner keeps (owner, admin, member or a custom role); default: the new owner's previous role
        #[arg(long = "keep-as", value_name = "ROLE")]
        keep_as: Option<String>,
    },
    /// List, add, re-role or remove members.
    Members {
        /// What to do with the members.
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Accept a membership the user was added to from the application
    /// (`orgkeeper.add_member` invites; only the user activates it).
    Join {
        /// The invited user.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
    },
    /// Decline a membership the user was added to (it is removed).
    Decline {
        /// The invited user.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
    },
    /// Leave an organization (the last owner cannot).
    Leave {
        /// The user who leaves.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
    },
    /// Invite an email address; prints the token, which is shown only once.
    Invite {
        /// The inviting owner or admin.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// The invitee's email address.
        email: String,
        /// The role they will get (at most the inviter's own).
        #[arg(long, default_value = "member")]
        role: String,
        /// How long the invitation stays valid (a PostgreSQL interval, at most 90 days).
        #[arg(long, default_value = "7 days")]
        valid_for: String,
    },
    /// List an organization's invitations and their status (owners and admins).
    Invitations {
        /// The acting owner or admin.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
    },
    /// Revoke an invitation, by token or by the id `invitations` shows.
    Revoke {
        /// The acting owner or admin.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The invitation's token (`-` reads it from standard input).
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        token: Option<String>,
        /// The invitation's id.
        #[arg(long)]
        id: Option<i64>,
    },
    /// Accept an invitation; the user's email must be the invited one.
    Accept {
        /// The accepting user.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The token (`-` reads it from standard input, keeping it out of shell history).
        token: String,
    },
}

/// `orgkeeper org members …`
#[derive(Debug, clap::Subcommand)]
pub enum MembersCommand {
    /// List the members of an organization (any member may).
    List {
        /// The acting member.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
    },
    /// Add a user as an active member (owners and admins; never a role above their own).
    Add {
        /// The acting owner or admin.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// The user to add.
        user: Uuid,
        /// Their role.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Change a member's role.
    SetRole {
        /// The acting owner or admin.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// The member.
        user: Uuid,
        /// The new role (owner, admin, member, or a custom role).
        role: String,
    },
    /// Remove a member.
    Remove {
        /// The acting owner or admin.
        #[arg(long = "as", value_name = "USER", env = "ORGKEEPER_ACTOR")]
        actor: Uuid,
        /// The organization (id or name).
        org: String,
        /// The member to remove.
        user: Uuid,
    },
}

/// Runs one organization command. A refusal by the database prints
/// `error: <message> (SQLSTATE xxxxx)` and its hint and returns exit code 1;
/// other failures (no connection, …) are returned as errors.
pub async fn run(pool: &PgPool, command: OrgCommand) -> anyhow::Result<ExitCode> {
    match execute(pool, command).await {
        Ok(code) => Ok(code),
        Err(Failure::Database(err)) => match refusal(&err) {
            Some(text) => {
                eprintln!("{text}");
                Ok(ExitCode::from(1))
            }
            None => Err(err.into()),
        },
        Err(Failure::Usage(text)) => {
            eprintln!("error: {text}");
            Ok(ExitCode::from(1))
        }
        Err(Failure::Other(err)) => Err(err),
    }
}

/// What went wrong in a command.
enum Failure {
    Database(sqlx::Error),
    Usage(String),
    Other(anyhow::Error),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Failure::Database(err)
    }
}

/// The text printed for a refusal (`error: <message> (SQLSTATE xxxxx)` and
/// its hint), or None when `err` is not one.
pub(crate) fn refusal(err: &sqlx::Error) -> Option<String> {
    let db = err.as_database_error()?;
    let code = db.code().map(|c| c.to_string()).unwrap_or_default();
    let mut text = format!("error: {} (SQLSTATE {code})", db.message());
    if let Some(hint) = db
        .try_downcast_ref::<PgDatabaseError>()
        .and_then(|e| e.hint())
    {
        text.push_str(&format!("\nhint: {hint}"));
    }
    Some(text)
}

/// A transaction acting for `actor`: the functions then refuse any other actor.
async fn begin(pool: &PgPool, actor: Uuid) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('orgkeeper.user_id', $1, true)")
        .bind(actor.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// An organization given by id, or by the exact (case-insensitive) name of
/// one the actor belongs to.
async fn resolve_org(
    tx: &mut Transaction<'static, Postgres>,
    actor: Uuid,
    org: &str,
) -> Result<Uuid, Failure> {
    if let Ok(id) = Uuid::parse_str(org.trim()) {
        return Ok(id);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT l.org_id FROM orgkeeper.list_orgs($1) l WHERE lower(l.name) = lower(btrim($2))",
    )
    .bind(actor)
    .bind(org)
    .fetch_all(&mut **tx)
    .await?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(Failure::Usage(format!(
            "user {actor} belongs to no organization named {org:?}; give its id, or see `orgkeeper org list --as {actor}`"
        ))),
    }
}

/// Reads a token argument; `-` means one line of standard input.
fn read_token(token: &str) -> Result<String, Failure> {
    if token != "-" {
        return Ok(token.trim().to_string());
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
        Failure::Other(anyhow::anyhow!(
            "cannot read the token from standard input: {e}"
        ))
    })?;
    Ok(line.trim().to_string())
}

/// A query on a transaction, before it runs.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// A transaction acting for `actor`, and the organization `org` resolved in it.
async fn open_org(
    pool: &PgPool,
    actor: Uuid,
    org: &str,
) -> Result<(Transaction<'static, Postgres>, Uuid), Failure> {
    let mut tx = begin(pool, actor).await?;
    let id = resolve_org(&mut tx, actor, org).await?;
    Ok((tx, id))
}

/// Runs `sql` with `$1` = actor and `$2` = organization, plus whatever `binds`
/// adds, in one transaction acting for `actor`, and commits. Returns the
/// organization's id.
async fn call_on_org<'q>(
    pool: &PgPool,
    actor: Uuid,
    org: &str,
    sql: &'static str,
    binds: impl FnOnce(PgQuery<'q>) -> PgQuery<'q>,
) -> Result<Uuid, Failure> {
    let (mut tx, id) = open_org(pool, actor, org).await?;
    binds(sqlx::query(sql).bind(actor).bind(id))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Runs `query` in a transaction acting for `actor` and commits.
async fn call(pool: &PgPool, actor: Uuid, query: PgQuery<'_>) -> Result<(), Failure> {
    let mut tx = begin(pool, actor).await?;
    query.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

async fn execute(pool: &PgPool, command: OrgCommand) -> Result<ExitCode, Failure> {
    match command {
        OrgCommand::List { actor } => {
            let mut tx = begin(pool, actor).await?;
            list_orgs(&mut tx, actor).await?;
            tx.commit().await?;
        }
        OrgCommand::Create { actor, name } => {
            let mut tx = begin(pool, actor).await?;
            let id: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org($1, $2)")
                .bind(&name)
                .bind(actor)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            println!(
                "created organization \"{}\" ({id}), owned by {actor}",
                name.trim()
            );
            println!("its LiteLLM team is provisioned by the daemon (orgkeeper listen)");
        }
        OrgCommand::Rename {
            actor,
            org,
            new_name,
        } => {
            let sql = "SELECT orgkeeper.rename_org($1, $2, $3)";
            let id = call_on_org(pool, actor, &org, sql, |q| q.bind(&new_name)).await?;
            println!("renamed organization {id} to \"{}\"", new_name.trim());
        }
        OrgCommand::Delete { actor, org, yes } => {
            let (mut tx, id) = open_org(pool, actor, &org).await?;
            if !yes {
                return Err(Failure::Usage(format!(
                    "deleting organization {id} removes its memberships, invitations, API keys, secrets and integrations; run again with --yes to confirm"
                )));
            }
            sqlx::query("SELECT orgkeeper.delete_org($1, $2)")
                .bind(actor)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            println!("deleted organization {id}; billing records were kept (detached), the LiteLLM team deletion is queued");
        }
        OrgCommand::Transfer {
            actor,
            org,
            new_owner,
            keep_as,
        } => {
            let (mut tx, id) = open_org(pool, actor, &org).await?;
            sqlx::query("SELECT orgkeeper.transfer_ownership($1, $2, $3, $4)")
                .bind(actor)
                .bind(id)
                .bind(new_owner)
                .bind(&keep_as)
                .execute(&mut *tx)
                .await?;
            let kept: String = sqlx::query_scalar(
                "SELECT m.role FROM orgkeeper.list_members($1, $2) m WHERE m.user_id = $1",
            )
            .bind(actor)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            println!("{new_owner} now owns organization {id}; {actor} is now {kept}");
        }
        OrgCommand::Members { command } => members(pool, command).await?,
        OrgCommand::Leave { actor, org } => {
            let sql = "SELECT orgkeeper.leave_org($1, $2)";
            let id = call_on_org(pool, actor, &org, sql, |q| q).await?;
            println!("{actor} left organization {id}");
        }
        OrgCommand::Invite {
            actor,
            org,
            email,
            role,
            valid_for,
        } => {
            let (mut tx, id) = open_org(pool, actor, &org).await?;
            let (token, expires): (String, DateTime<Utc>) = sqlx::query_as(
                "SELECT t, now() + $5::interval
                   FROM orgkeeper.create_invitation($1, $2, $3, $4, $5::interval) t",
            )
            .bind(actor)
            .bind(id)
            .bind(&email)
            .bind(&role)
            .bind(&valid_for)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            println!(
                "invited {} to organization {id} as {role}, valid until {}",
                email.trim(),
                when(expires)
            );
            println!("token (shown only now; only its hash is stored): {token}");
        }
        OrgCommand::Invitations { actor, org } => {
            let (mut tx, id) = open_org(pool, actor, &org).await?;
            list_invitations(&mut tx, actor, id).await?;
            tx.commit().await?;
        }
        OrgCommand::Revoke { actor, token, id } => {
            let query = match (token, id) {
                (Some(token), _) => sqlx::query("SELECT orgkeeper.revoke_invitation($1, $2)")
                    .bind(actor)
                    .bind(read_token(&token)?),
                (None, Some(id)) => sqlx::query("SELECT orgkeeper.revoke_invitation_by_id($1, $2)")
                    .bind(actor)
                    .bind(id),
                (None, None) => return Err(Failure::Usage("give --token or --id".into())),
            };
            call(pool, actor, query).await?;
            println!("invitation revoked");
        }
        OrgCommand::Join { actor, org } => {
            let sql = "SELECT orgkeeper.accept_membership($1, $2)";
            let id = call_on_org(pool, actor, &org, sql, |q| q).await?;
            println!("{actor} joined organization {id}");
        }
        OrgCommand::Decline { actor, org } => {
            let sql = "SELECT orgkeeper.decline_membership($1, $2)";
            let id = call_on_org(pool, actor, &org, sql, |q| q).await?;
            println!("{actor} declined the membership in organization {id}");
        }
        OrgCommand::Accept { actor, token } => {
            let token = read_token(&token)?;
            let mut tx = begin(pool, actor).await?;
            let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.accept_invitation($1, $2)")
                .bind(actor)
                .bind(&token)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            println!("{actor} joined organization {org}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn members(pool: &PgPool, command: MembersCommand) -> Result<(), Failure> {
    match command {
        MembersCommand::List { actor, org } => {
            let (mut tx, id) = open_org(pool, actor, &org).await?;
            let rows: Vec<MemberRow> = sqlx::query_as(
                "SELECT user_id, email, role, status, joined_at FROM orgkeeper.list_members($1, $2)",
            )
            .bind(actor)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            print_table(
                &["USER", "EMAIL", "ROLE", "STATUS", "SINCE"],
                rows.into_iter()
                    .map(|(user, email, role, status, since)| {
                        vec![
                            user.to_string(),
                            email.unwrap_or_default(),
                            role,
                            status,
                            when(since),
                        ]
                    })
                    .collect(),
            );
        }
        MembersCommand::Add {
            actor,
            org,
            user,
            role,
        } => {
            let sql = "SELECT orgkeeper.add_member($1, $2, $3, $4)";
            let id = call_on_org(pool, actor, &org, sql, |q| q.bind(user).bind(&role)).await?;
            println!("added {user} to organization {id} as {role}");
        }
        MembersCommand::SetRole {
            actor,
            org,
            user,
            role,
        } => {
            let sql = "SELECT orgkeeper.change_member_role($1, $2, $3, $4)";
            let id = call_on_org(pool, actor, &org, sql, |q| q.bind(user).bind(&role)).await?;
            println!("{user} is now {role} in organization {id}");
        }
        MembersCommand::Remove { actor, org, user } => {
            let sql = "SELECT orgkeeper.remove_member($1, $2, $3)";
            let id = call_on_org(pool, actor, &org, sql, |q| q.bind(user)).await?;
            println!("removed {user} from organization {id}");
        }
    }
    Ok(())
}

async fn list_orgs(tx: &mut Transaction<'static, Postgres>, actor: Uuid) -> Result<(), Failure> {
    let rows: Vec<OrgRow> = sqlx::query_as(
        "SELECT org_id, name, kind, role, status, is_current, provisioning_status, members
           FROM orgkeeper.list_orgs($1)",
    )
    .bind(actor)
    .fetch_all(&mut **tx)
    .await?;
    print_table(
        &[
            "",
            "ORG",
            "NAME",
            "KIND",
            "ROLE",
            "STATUS",
            "MEMBERS",
            "PROVISIONING",
        ],
        rows.into_iter()
            .map(
                |(id, name, kind, role, status, current, provisioning, members)| {
                    vec![
                        if current { "*".into() } else { String::new() },
                        id.to_string(),
                        name,
                        kind,
                        role,
                        status,
                        members.to_string(),
                        provisioning,
                    ]
                },
            )
            .collect(),
    );
    Ok(())
}

/// user, email, role, status, since
type MemberRow = (Uuid, Option<String>, String, String, DateTime<Utc>);

/// id, name, kind, role, status, is current, provisioning status, members
type OrgRow = (Uuid, String, String, String, String, bool, String, i32);

/// id, email, role, status, invited by, expires, accepted by
type InvitationRow = (
    i64,
    String,
    String,
    String,
    Uuid,
    DateTime<Utc>,
    Option<Uuid>,
);

async fn list_invitations(
    tx: &mut Transaction<'static, Postgres>,
    actor: Uuid,
    org: Uuid,
) -> Result<(), Failure> {
    let rows: Vec<InvitationRow> = sqlx::query_as(
        "SELECT id, email, role, status, invited_by, expires_at, accepted_by
           FROM orgkeeper.list_invitations($1, $2)",
    )
    .bind(actor)
    .bind(org)
    .fetch_all(&mut **tx)
    .await?;
    print_table(
        &[
            "ID",
            "EMAIL",
            "ROLE",
            "STATUS",
            "INVITED BY",
            "EXPIRES",
            "ACCEPTED BY",
        ],
        rows.into_iter()
            .map(|(id, email, role, status, by, expires, accepted_by)| {
                vec![
                    id.to_string(),
                    email,
                    role,
                    status,
                    by.to_string(),
                    when(expires),
                    accepted_by.map(|u| u.to_string()).unwrap_or_default(),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Prints rows as aligned columns under a header, or `(none)`.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", render_table(headers, &rows));
}

fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_string();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_say_when_empty() {
        let out = render_table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "Acme".into()],
                vec!["22".into(), "Globex Corporation".into()],
            ],
        );
        assert_eq!(out, "ID  NAME\n1   Acme\n22  Globex Corporation\n");
        assert_eq!(render_table(&["ID"], &[]), "(none)\n");
    }

    #[test]
    fn the_command_line_parses() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            command: OrgCommand,
        }
        let actor = Uuid::new_v4();
        let cli = Cli::try_parse_from([
            "orgs",
            "members",
            "add",
            "--as",
            &actor.to_string(),
            "Acme",
            &actor.to_string(),
            "--role",
            "admin",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            OrgCommand::Members { command: MembersCommand::Add { ref role, .. } } if role == "admin"
        ));
        assert!(Cli::try_parse_from(["orgs", "revoke", "--as", &actor.to_string()]).is_err());
        let cli =
            Cli::try_parse_from(["orgs", "join", "--as", &actor.to_string(), "Acme"]).unwrap();
        assert!(matches!(cli.command, OrgCommand::Join { ref org, .. } if org == "Acme"));
    }
}

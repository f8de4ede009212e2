//! The daemon's side of the outbox table: one method per SQL function in
//! `sql/outbox.sql`. Every write is fenced on this replica's lease.

use serde_json::Value;
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

/// One claimed action.
#[derive(Debug, Clone)]
pub struct Action {
    /// Row id.
    pub id: i64,
    /// `service.action`.
    pub kind: String,
    /// The organization concerned.
    pub org_id: Option<Uuid>,
    /// The user concerned.
    pub user_id: Option<Uuid>,
    /// What the handler needs.
    pub payload: Value,
    /// `running` (forward work) or `compensating` (cleanup owed).
    pub status: String,
    /// Claims so far, including this one.
    pub attempts: i32,
    /// Checkpoints of earlier attempts.
    pub progress: Value,
    /// The latest recorded error.
    pub last_error: Option<String>,
    /// The lease token (`locked_by`: "<worker>/<attempt>") every write must present.
    pub lease: String,
}

/// The outbox as seen by one daemon replica.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    worker: String,
    lease: Duration,
}

impl Outbox {
    /// The outbox for replica `worker`, leasing actions for `lease`.
    pub fn new(pool: PgPool, worker: String, lease: Duration) -> Self {
        Outbox {
            pool,
            worker,
            lease,
        }
    }

    /// The pool, for handlers' fenced write-backs.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Leases up to `limit` due actions to this replica.
    pub async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Action>> {
        let rows = sqlx::query(
            "SELECT id, kind, org_id, user_id, payload, status, attempts, progress, last_error, locked_by
               FROM orgkeeper.claim_actions($1, $2, make_interval(secs => $3))",
        )
        .bind(&self.worker)
        .bind(limit as i32)
        .bind(self.lease.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Action {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    org_id: r.try_get("org_id")?,
                    user_id: r.try_get("user_id")?,
                    payload: r.try_get("payload")?,
                    status: r.try_get("status")?,
                    attempts: r.try_get("attempts")?,
                    progress: r.try_get("progress")?,
                    last_error: r.try_get("last_error")?,
                    lease: r.try_get("locked_by")?,
                })
            })
            .collect()
    }

    /// Records that this replica waits for work for at most `valid_for`
    /// (inserts then NOTIFY it), in its own transaction.
    pub async fn wait_for_work(&self, valid_for: Duration) -> sqlx::Result<()> {
        sqlx::query("SELECT orgkeeper.daemon_waits($1, make_interval(secs => $2))")
            .bind(&self.worker)
            .bind(valid_for.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records that this replica has no free slot (inserts need not notify it).
    pub async fn busy(&self) -> sqlx::Result<()> {
        sqlx::query("SELECT orgkeeper.daemon_busy($1)")
            .bind(&self.worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether no transaction that inserted actions is still open, so a claim
    /// now sees every action that will not notify.
    pub async fn inserts_settled(&self) -> sqlx::Result<bool> {
        sqlx::query_scalar("SELECT orgkeeper.inserts_settled()")
            .fetch_one(&self.pool)
            .await
    }

    /// Returns actions whose lease expired to the queue.
    pub async fn sweep(&self) -> sqlx::Result<i32> {
        sqlx::query_scalar("SELECT orgkeeper.sweep_expired_leases()")
            .fetch_one(&self.pool)
            .await
    }

    /// Merges checkpoint data into the action's progress. False = lease lost.
    pub async fn save_progress(&self, action: &Action, progress: &Value) -> sqlx::Result<bool> {
        self.fenced("SELECT orgkeeper.save_progress($1, $2, $3)", action, |q| {
            q.bind(progress)
        })
        .await
    }

    /// Merges progress into several actions in one statement; returns the
    /// ids whose lease still held (the others were left unchanged).
    pub async fn save_progress_many(
        &self,
        entries: &[(&Action, &Value)],
    ) -> sqlx::Result<Vec<i64>> {
        let ids: Vec<i64> = entries.iter().map(|(a, _)| a.id).collect();
        let leases: Vec<&str> = entries.iter().map(|(a, _)| a.lease.as_str()).collect();
        let progress: Vec<&Value> = entries.iter().map(|(_, p)| *p).collect();
        sqlx::query_scalar("SELECT orgkeeper.save_progress_many($1, $2, $3)")
            .bind(ids)
            .bind(leases)
            .bind(progress)
            .fetch_all(&self.pool)
            .await
    }

    /// Extends the action's lease by the lease length. False = lease lost.
    pub async fn extend_lease(&self, action: &Action) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.extend_lease($1, $2, make_interval(secs => $3))",
            action,
            |q| q.bind(self.lease.as_secs_f64()),
        )
        .await
    }

    /// Marks the action done with `result`. False = lease lost.
    pub async fn complete(&self, action: &Action, result: &Value) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.complete_action($1, $2, $3)",
            action,
            |q| q.bind(result),
        )
        .await
    }

    /// Records a transient error and schedules the action again after `delay`.
    pub async fn retry_later(
        &self,
        action: &Action,
        error: &str,
        delay: Duration,
    ) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.retry_action_later($1, $2, $3, make_interval(secs => $4))",
            action,
            |q| q.bind(error).bind(delay.as_secs_f64()),
        )
        .await
    }

    /// Records a permanent error and moves the action to `compensating`.
    pub async fn begin_compensation(&self, action: &Action, error: &str) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.begin_compensation($1, $2, $3)",
            action,
            |q| q.bind(error),
        )
        .await
    }

    /// Ends the action as `failed` or `compensated`, merging `result`.
    pub async fn finish(
        &self,
        action: &Action,
        status: &str,
        result: &Value,
        error: Option<&str>,
    ) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.finish_action($1, $2, $3, $4, $5)",
            action,
            |q| q.bind(status).bind(result).bind(error),
        )
        .await
    }

    /// Gives an unfinished action back to the queue (shutdown).
    pub async fn release(&self, action: &Action) -> sqlx::Result<bool> {
        self.fenced("SELECT orgkeeper.release_action($1, $2)", action, |q| q)
            .await
    }

    async fn fenced<'q>(
        &'q self,
        sql: &'static str,
        action: &'q Action,
        bind: impl FnOnce(
            sqlx::query::QueryScalar<'q, sqlx::Postgres, bool, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::QueryScalar<
            'q,
            sqlx::Postgres,
            bool,
            sqlx::postgres::PgArguments,
        >,
    ) -> sqlx::Result<bool> {
        bind(sqlx::query_scalar(sql).bind(action.id).bind(&action.lease))
            .fetch_one(&self.pool)
            .await
    }
}

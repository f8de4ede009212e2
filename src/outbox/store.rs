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

    /// This replica's name, as written in `locked_by`.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The pool, for handlers' fenced write-backs.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Leases up to `limit` due actions to this replica.
    pub async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Action>> {
        let rows = sqlx::query(
            "SELECT id, kind, org_id, user_id, payload, status, attempts, progress, last_error
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
                })
            })
            .collect()
    }

    /// Returns actions whose lease expired to the queue.
    pub async fn sweep(&self) -> sqlx::Result<i32> {
        sqlx::query_scalar("SELECT orgkeeper.sweep_expired_leases()")
            .fetch_one(&self.pool)
            .await
    }

    /// Merges checkpoint data into the action's progress. False = lease lost.
    pub async fn save_progress(&self, id: i64, progress: &Value) -> sqlx::Result<bool> {
        self.fenced("SELECT orgkeeper.save_progress($1, $2, $3)", id, |q| {
            q.bind(progress)
        })
        .await
    }

    /// Marks the action done with `result`. False = lease lost.
    pub async fn complete(&self, id: i64, result: &Value) -> sqlx::Result<bool> {
        self.fenced("SELECT orgkeeper.complete_action($1, $2, $3)", id, |q| {
            q.bind(result)
        })
        .await
    }

    /// Records a transient error and schedules the action again after `delay`.
    pub async fn retry_later(&self, id: i64, error: &str, delay: Duration) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.retry_action_later($1, $2, $3, make_interval(secs => $4))",
            id,
            |q| q.bind(error).bind(delay.as_secs_f64()),
        )
        .await
    }

    /// Records a permanent error and moves the action to `compensating`.
    pub async fn begin_compensation(&self, id: i64, error: &str) -> sqlx::Result<bool> {
        self.fenced("SELECT orgkeeper.begin_compensation($1, $2, $3)", id, |q| {
            q.bind(error)
        })
        .await
    }

    /// Ends the action as `failed` or `compensated`, merging `result`.
    pub async fn finish(
        &self,
        id: i64,
        status: &str,
        result: &Value,
        error: Option<&str>,
    ) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.finish_action($1, $2, $3, $4, $5)",
            id,
            |q| q.bind(status).bind(result).bind(error),
        )
        .await
    }

    /// Gives an unfinished action back to the queue (shutdown), not counting the attempt.
    pub async fn release(&self, id: i64) -> sqlx::Result<bool> {
        self.fenced("SELECT orgkeeper.release_action($1, $2)", id, |q| q)
            .await
    }

    async fn fenced<'q>(
        &'q self,
        sql: &'q str,
        id: i64,
        bind: impl FnOnce(
            sqlx::query::QueryScalar<'q, sqlx::Postgres, bool, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::QueryScalar<
            'q,
            sqlx::Postgres,
            bool,
            sqlx::postgres::PgArguments,
        >,
    ) -> sqlx::Result<bool> {
        bind(sqlx::query_scalar(sql).bind(id).bind(&self.worker))
            .fetch_one(&self.pool)
            .await
    }
}

//! The daemon's side of the outbox table: one method per SQL function in
//! `sql/outbox.sql`. Every write is fenced on this replica's lease.
//! Completions, retries and progress saves go through the replica's
//! batchers ([`super::batch`]): one statement per batch, fenced per row.

use super::batch::{held, outcomes_in_order, BatchWrite, Running, WriteBacks};
use super::ActionStatus;
use serde_json::Value;
use sqlx::postgres::types::PgInterval;
use sqlx::{PgConnection, PgPool, Row};
use std::sync::Arc;
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
    write_backs: Arc<WriteBacks>,
}

impl Outbox {
    /// The outbox for replica `worker`, leasing actions for `lease`.
    pub fn new(pool: PgPool, worker: String, lease: Duration) -> Self {
        Outbox {
            pool,
            worker,
            lease,
            write_backs: Arc::default(),
        }
    }

    /// Counts an action as running until the value is dropped: batchers
    /// wait for running actions' write-backs (at most [`super::batch::GATHER`]).
    pub fn running(&self) -> Running {
        Running::start(self.write_backs.activity())
    }

    /// Writes `row` with the next batch of its kind (one statement for the
    /// batch, fenced per row) and returns this row's outcome.
    pub async fn write_back<W: BatchWrite>(&self, row: W) -> sqlx::Result<W::Outcome> {
        self.write_backs.write(&self.pool, row).await
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
    /// Batched; committed synchronously (see [`Progress`]).
    pub async fn save_progress(&self, action: &Action, progress: &Value) -> sqlx::Result<bool> {
        self.write_back(Progress::<true>::new(action, progress.clone()))
            .await
    }

    /// Like [`Outbox::save_progress`] for a note that only a report reads
    /// (no retry depends on it): committed asynchronously, so it costs the
    /// action no WAL flush. A database crash may lose it, as a daemon
    /// killed just before it would have.
    pub async fn note_progress(&self, action: &Action, progress: &Value) -> sqlx::Result<bool> {
        self.write_back(Progress::<false>::new(action, progress.clone()))
            .await
    }

    /// The action's progress as stored now (the claimed copy misses what
    /// this attempt saved since); `{}` when the action is gone.
    pub async fn stored_progress(&self, action: &Action) -> sqlx::Result<Value> {
        let progress: Option<Value> = sqlx::query_scalar(
            "SELECT progress FROM orgkeeper.pending_external_actions WHERE id = $1",
        )
        .bind(action.id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(progress.unwrap_or_else(|| serde_json::json!({})))
    }

    /// Merges progress into several actions in one statement, now; returns
    /// whether each one's lease still held (the others were left unchanged).
    pub async fn save_progress_many(
        &self,
        entries: &[(&Action, &Value)],
    ) -> sqlx::Result<Vec<bool>> {
        let rows: Vec<Progress<true>> = entries
            .iter()
            .map(|(a, p)| Progress::new(a, (*p).clone()))
            .collect();
        Progress::write(&mut *self.pool.acquire().await?, &rows).await
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

    /// Marks the action done with `result`. False = lease lost. Batched;
    /// committed asynchronously (see [`Completion`]).
    pub async fn complete(&self, action: &Action, result: &Value) -> sqlx::Result<bool> {
        self.write_back(Completion {
            fence: Fence::of(action),
            result: result.clone(),
        })
        .await
    }

    /// Records a transient error and schedules the action again after
    /// `delay`. False = lease lost. Batched; committed asynchronously (see [`Retry`]).
    pub async fn retry_later(
        &self,
        action: &Action,
        error: &str,
        delay: Duration,
    ) -> sqlx::Result<bool> {
        self.write_back(Retry {
            fence: Fence::of(action),
            error: error.to_string(),
            delay,
        })
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
        status: ActionStatus,
        result: &Value,
        error: Option<&str>,
    ) -> sqlx::Result<bool> {
        self.fenced(
            "SELECT orgkeeper.finish_action($1, $2, $3, $4, $5)",
            action,
            |q| q.bind(status.as_str()).bind(result).bind(error),
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

/// The action and lease token a batched write-back is fenced on.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Action id.
    pub id: i64,
    /// The lease token the claim gave this replica.
    pub lease: String,
}

impl Fence {
    /// The fence of `action` as this replica claimed it.
    pub fn of(action: &Action) -> Self {
        Fence {
            id: action.id,
            lease: action.lease.clone(),
        }
    }
}

/// The ids and lease tokens of `rows`, the first two parameters of every
/// batched write-back.
fn fences<W>(rows: &[W], fence: impl Fn(&W) -> &Fence) -> (Vec<i64>, Vec<&str>) {
    rows.iter()
        .map(|r| (fence(r).id, fence(r).lease.as_str()))
        .unzip()
}

/// A query returning ids, its first two parameters bound.
type IdsQuery<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, i64, sqlx::postgres::PgArguments>;

/// Runs `sql` (a batched SQL function taking the rows' ids and lease tokens
/// as `$1` and `$2`, the rest bound by `bind`, and returning the ids whose
/// lease held) and returns whether each row's lease held.
async fn write_fenced<'q, W: 'q>(
    conn: &mut PgConnection,
    sql: &'static str,
    rows: &'q [W],
    fence: impl Fn(&W) -> &Fence,
    bind: impl FnOnce(IdsQuery<'q>) -> IdsQuery<'q>,
) -> sqlx::Result<Vec<bool>> {
    let (ids, leases) = fences(rows, fence);
    let query = sqlx::query_scalar(sql).bind(ids.clone()).bind(leases);
    let landed = bind(query).fetch_all(conn).await?;
    Ok(held(ids, &landed))
}

/// A query returning `(action id, outcome)` rows, its first two parameters bound.
pub type OutcomesQuery<'q, T> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, (i64, T), sqlx::postgres::PgArguments>;

/// Runs `sql` (a batched SQL function taking the rows' ids and lease tokens
/// as `$1` and `$2`, the rest bound by `bind`, and returning one
/// `(action id, outcome)` row per action) and returns each row's outcome in
/// order; `what` names the write when an outcome is missing.
pub async fn write_outcomes<'q, W: 'q, T>(
    conn: &mut PgConnection,
    sql: &'static str,
    rows: &'q [W],
    fence: impl Fn(&W) -> &Fence,
    what: &str,
    bind: impl FnOnce(OutcomesQuery<'q, T>) -> OutcomesQuery<'q, T>,
) -> sqlx::Result<Vec<T>>
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let (ids, leases) = fences(rows, fence);
    let query = sqlx::query_as(sql).bind(ids.clone()).bind(leases);
    let recorded = bind(query).fetch_all(conn).await?;
    outcomes_in_order(&ids, recorded, what)
}

/// A progress save (`orgkeeper.save_progress_many`). Committed
/// synchronously: a progress save may hold the key chosen before
/// `/key/generate` (see `handlers::keys`), which a retry must find.
///
/// `DURABLE = false` is [`Outbox::note_progress`]: the same write, committed
/// asynchronously, by its own batcher.
struct Progress<const DURABLE: bool> {
    fence: Fence,
    progress: Value,
}

impl<const DURABLE: bool> Progress<DURABLE> {
    fn new(action: &Action, progress: Value) -> Self {
        Progress {
            fence: Fence::of(action),
            progress,
        }
    }
}

impl<const DURABLE: bool> BatchWrite for Progress<DURABLE> {
    type Outcome = bool;
    const ASYNC_COMMIT: bool = !DURABLE;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<bool>> {
        let progress: Vec<&Value> = rows.iter().map(|r| &r.progress).collect();
        let sql = "SELECT orgkeeper.save_progress_many($1, $2, $3)";
        write_fenced(conn, sql, rows, |r| &r.fence, |q| q.bind(progress)).await
    }
}

/// A completion (`orgkeeper.complete_actions`). Committed asynchronously:
/// a completion lost in a database crash leaves the action running under a
/// lease that expires, so it runs again — as after a daemon killed just
/// before completing it, which every handler survives (each step is
/// idempotent). Later synchronous commits (claims, key saves) flush it.
struct Completion {
    fence: Fence,
    result: Value,
}

impl BatchWrite for Completion {
    type Outcome = bool;
    const ASYNC_COMMIT: bool = true;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<bool>> {
        let results: Vec<&Value> = rows.iter().map(|r| &r.result).collect();
        let sql = "SELECT orgkeeper.complete_actions($1, $2, $3)";
        write_fenced(conn, sql, rows, |r| &r.fence, |q| q.bind(results)).await
    }
}

/// A transient failure and its backoff (`orgkeeper.retry_actions_later`).
/// Committed asynchronously: when lost, the action's lease expires and it
/// runs again sooner than the backoff said; only the error entry is lost.
struct Retry {
    fence: Fence,
    error: String,
    delay: Duration,
}

impl BatchWrite for Retry {
    type Outcome = bool;
    const ASYNC_COMMIT: bool = true;

    async fn write(conn: &mut PgConnection, rows: &[Self]) -> sqlx::Result<Vec<bool>> {
        let errors: Vec<&str> = rows.iter().map(|r| r.error.as_str()).collect();
        // Whole microseconds (an interval's precision; jittered delays have nanoseconds).
        let delays: Vec<PgInterval> = rows
            .iter()
            .map(|r| PgInterval {
                months: 0,
                days: 0,
                microseconds: i64::try_from(r.delay.as_micros()).unwrap_or(i64::MAX),
            })
            .collect();
        let sql = "SELECT orgkeeper.retry_actions_later($1, $2, $3, $4)";
        write_fenced(
            conn,
            sql,
            rows,
            |r| &r.fence,
            |q| q.bind(errors).bind(delays),
        )
        .await
    }
}

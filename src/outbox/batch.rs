//! Write-backs of many actions gathered into one statement.
//!
//! Each kind of write-back ([`BatchWrite`]: completions, retries, progress
//! saves, a handler's own write-back) has one batcher task per replica. An
//! action's task hands it its row and waits; the batcher gathers rows until
//! every action this replica is running has handed one over (to any batcher),
//! for at most [`GATHER`], then writes them with one call of a SQL function
//! taking arrays: one statement and one commit instead of one per action.
//! Every row stays fenced on its own lease, and each waiting task learns its
//! own row's outcome (did the fenced write land?). When a batch's statement
//! fails, its rows are written again one at a time, so one bad row costs
//! only its own action a retry.

use sqlx::{PgConnection, PgPool};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Longest time a batcher waits for more rows after the first one.
pub const GATHER: Duration = Duration::from_micros(500);

/// Most rows written by one statement.
const MAX_BATCH: usize = 512;

/// Batches of one kind written at once (each on its own connection).
const LANES: usize = 4;

/// One kind of write-back that many actions can write in one statement.
pub trait BatchWrite: Sized + Send + Sync + 'static {
    /// What the action's task learns about its own row (e.g. whether its
    /// lease still held).
    type Outcome: Send + 'static;

    /// Whether the batch's transaction may commit asynchronously
    /// (`synchronous_commit = off`): only when losing that commit in a
    /// database crash merely makes an idempotent step run again. A batch
    /// that records what a later external call relies on (a key chosen
    /// before `/key/generate`) commits synchronously.
    const ASYNC_COMMIT: bool;

    /// Writes `rows` with one statement on `conn`; one outcome per row, in order.
    fn write(
        conn: &mut PgConnection,
        rows: &[Self],
    ) -> impl Future<Output = sqlx::Result<Vec<Self::Outcome>>> + Send;
}

/// For a write that returns the ids whose lease held: whether each row's did.
pub fn held(ids: impl IntoIterator<Item = i64>, landed: &[i64]) -> Vec<bool> {
    let landed: std::collections::HashSet<i64> = landed.iter().copied().collect();
    ids.into_iter().map(|id| landed.contains(&id)).collect()
}

/// For a write that returns `(action id, outcome)` rows: each row's
/// outcome, in the order of `ids`; an id without one is a protocol error
/// naming `what` was written.
pub(crate) fn outcomes_in_order<T>(
    ids: &[i64],
    recorded: Vec<(i64, T)>,
    what: &str,
) -> sqlx::Result<Vec<T>> {
    let mut recorded: std::collections::HashMap<i64, T> = recorded.into_iter().collect();
    ids.iter()
        .map(|id| {
            recorded
                .remove(id)
                .ok_or_else(|| sqlx::Error::Protocol(format!("no {what} outcome for action {id}")))
        })
        .collect()
}

/// How many of a replica's actions are running, and how many of those wait
/// for a batched write-back: a batcher stops gathering when all of them wait.
#[derive(Debug, Default)]
pub struct Activity {
    running: AtomicUsize,
    waiting: AtomicUsize,
}

impl Activity {
    fn all_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) >= self.running.load(Ordering::Acquire)
    }
}

/// Counts one running action while it is held (see [`Activity`]).
pub struct Running(Arc<Activity>);

impl Running {
    /// Counts an action as running until the returned value is dropped.
    pub fn start(activity: &Arc<Activity>) -> Self {
        activity.running.fetch_add(1, Ordering::AcqRel);
        Running(activity.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a task as waiting for its write-back while held.
struct Waiting<'a>(&'a Activity);

impl<'a> Waiting<'a> {
    fn start(activity: &'a Activity) -> Self {
        activity.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(activity)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A row and where its outcome goes.
struct Request<W: BatchWrite> {
    row: W,
    reply: oneshot::Sender<sqlx::Result<W::Outcome>>,
}

/// The queue of one batcher task; the task ends when the last sender is dropped.
struct Batcher<W: BatchWrite> {
    queue: mpsc::UnboundedSender<Request<W>>,
}

/// A replica's batchers, one per kind of write-back, started on first use.
#[derive(Default)]
pub struct WriteBacks {
    activity: Arc<Activity>,
    batchers: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for WriteBacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBacks")
            .field("activity", &self.activity)
            .finish_non_exhaustive()
    }
}

impl WriteBacks {
    /// The running/waiting counts the batchers go by.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Writes `row` with the next batch of its kind and returns its outcome.
    pub async fn write<W: BatchWrite>(&self, pool: &PgPool, row: W) -> sqlx::Result<W::Outcome> {
        let batcher = self.batcher::<W>(pool);
        let (reply, outcome) = oneshot::channel();
        let _waiting = Waiting::start(&self.activity);
        batcher
            .queue
            .send(Request { row, reply })
            .map_err(|_| sqlx::Error::WorkerCrashed)?;
        outcome.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    fn batcher<W: BatchWrite>(&self, pool: &PgPool) -> Arc<Batcher<W>> {
        let mut batchers = self.batchers.lock().unwrap();
        let any = batchers.entry(TypeId::of::<W>()).or_insert_with(|| {
            let (queue, requests) = mpsc::unbounded_channel();
            tokio::spawn(gather(pool.clone(), self.activity.clone(), requests));
            Arc::new(Batcher::<W> { queue })
        });
        any.clone()
            .downcast::<Batcher<W>>()
            .expect("one batcher type per TypeId")
    }
}

/// The batcher task: gathers rows, writes them, answers each row's task.
/// Up to [`LANES`] batches of one kind are written at once; while every lane
/// is busy, rows queue and go into the next batch.
async fn gather<W: BatchWrite>(
    pool: PgPool,
    activity: Arc<Activity>,
    mut requests: mpsc::UnboundedReceiver<Request<W>>,
) {
    let lanes = Arc::new(Semaphore::new(LANES));
    while let Some(first) = requests.recv().await {
        let Ok(lane) = lanes.clone().acquire_owned().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + GATHER;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            if let Ok(next) = requests.try_recv() {
                batch.push(next);
                continue;
            }
            if activity.all_waiting() {
                break;
            }
            match tokio::time::timeout_at(deadline, requests.recv()).await {
                Ok(Some(next)) => batch.push(next),
                _ => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write_batch(&pool, batch).await;
            drop(lane);
        });
    }
}

async fn write_batch<W: BatchWrite>(pool: &PgPool, batch: Vec<Request<W>>) {
    let (rows, replies): (Vec<W>, Vec<_>) = batch.into_iter().map(|r| (r.row, r.reply)).unzip();
    match write_rows(pool, &rows).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) if rows.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, rows = rows.len(), "a batched write-back failed; writing its rows one by one");
            for (row, reply) in rows.iter().zip(replies) {
                let outcome = write_rows(pool, std::slice::from_ref(row)).await;
                let _ = reply.send(outcome.map(|mut o| o.remove(0)));
            }
        }
    }
}

/// One statement for `rows`, in a transaction that commits asynchronously
/// when `W` allows it.
async fn write_rows<W: BatchWrite>(pool: &PgPool, rows: &[W]) -> sqlx::Result<Vec<W::Outcome>> {
    let outcomes = if W::ASYNC_COMMIT {
        // The commit does not wait for the WAL flush: `W` says a database
        // crash may lose it only because the step it records runs again.
        let mut tx = pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?;
        let outcomes = W::write(&mut tx, rows).await?;
        tx.commit().await?;
        outcomes
    } else {
        W::write(&mut *pool.acquire().await?, rows).await?
    };
    if outcomes.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!(
            "a batched write-back answered {} outcomes for {} rows",
            outcomes.len(),
            rows.len()
        )));
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_ids_and_a_missing_one_is_named() {
        let got = outcomes_in_order(&[3, 1, 2], vec![(1, "a"), (2, "b"), (3, "c")], "x").unwrap();
        assert_eq!(got, ["c", "a", "b"]);
        let err = outcomes_in_order(&[1, 4], vec![(1, "a")], "provisioning").unwrap_err();
        assert!(
            err.to_string()
                .contains("no provisioning outcome for action 4"),
            "{err}"
        );
    }

    #[test]
    fn held_says_which_rows_landed() {
        assert_eq!(held([5, 6, 7], &[7, 5]), [true, false, true]);
    }
}

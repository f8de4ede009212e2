//! The listen/poll loop: wake on NOTIFY or the poll timer, sweep expired
//! leases, claim as many actions as there are free slots, perform each in its
//! own task, and record the outcome. Nothing holds a row lock across a call.

use super::{Action, Outbox};
use crate::actions::{self, ActionError, Finish, Services};
use crate::config::DaemonSettings;
use sqlx::postgres::PgListener;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// Tells the daemon to stop: send `true` (or drop the sender).
pub type Shutdown = watch::Receiver<bool>;

/// Most actions claimed by one statement.
const MAX_CLAIM: usize = 256;

/// One daemon replica.
pub struct Daemon {
    outbox: Outbox,
    services: Arc<Services>,
    settings: DaemonSettings,
}

impl Daemon {
    /// A replica that performs actions with `services` under `settings`.
    pub fn new(services: Arc<Services>, settings: DaemonSettings) -> Self {
        let outbox = Outbox::new(
            services.pool.clone(),
            settings.worker_id.clone(),
            settings.lease,
        );
        Daemon {
            outbox,
            services,
            settings,
        }
    }

    /// Runs until `shutdown` turns true; then stops claiming, lets in-flight
    /// actions finish within the grace period and releases the rest.
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(
            self.services.pool.clone(),
            wake.clone(),
            shutdown.clone(),
        ));
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut last_sweep: Option<Instant> = None;
        let mut db_backoff = Duration::from_millis(100);
        tracing::info!(worker = %self.settings.worker_id, concurrency = self.settings.concurrency, "daemon started");

        while !*shutdown.borrow() {
            while tasks.try_join_next().is_some() {}
            match self
                .tick(&slots, &in_flight, &mut tasks, &mut last_sweep)
                .await
            {
                Ok(filled_all_slots) => {
                    db_backoff = Duration::from_millis(100);
                    if filled_all_slots {
                        continue; // more may be due right away
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = db_backoff.as_millis() as u64, "cannot reach the outbox; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = shutdown.changed() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }

        tracing::info!(
            in_flight = tasks.len(),
            grace_s = self.settings.shutdown_grace.as_secs_f64(),
            "shutting down: no new claims"
        );
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let unfinished: Vec<i64> = in_flight.lock().unwrap().drain().collect();
            for id in unfinished {
                match self.outbox.release(id).await {
                    Ok(true) => self.services.metrics.action("?", "released"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(action = id, error = %e, "could not release; its lease will expire")
                    }
                }
            }
        }
        listener.abort();
        tracing::info!("daemon stopped");
        Ok(())
    }

    /// One round: sweep if due, then claim for every free slot. Returns
    /// whether every free slot was filled (so more work may be waiting).
    async fn tick(
        &self,
        slots: &Arc<Semaphore>,
        in_flight: &Arc<Mutex<HashSet<i64>>>,
        tasks: &mut JoinSet<()>,
        last_sweep: &mut Option<Instant>,
    ) -> sqlx::Result<bool> {
        if last_sweep.is_none_or(|t| t.elapsed() >= self.settings.lease / 2) {
            let swept = self.outbox.sweep().await?;
            if swept > 0 {
                tracing::warn!(swept, "returned actions with expired leases to the queue");
            }
            *last_sweep = Some(Instant::now());
        }
        let free = slots.available_permits().min(MAX_CLAIM);
        if free == 0 {
            return Ok(false);
        }
        let started = Instant::now();
        let claimed = self.outbox.claim(free).await?;
        self.services.metrics.claim_latency(started.elapsed());
        let filled = claimed.len() == free;
        for action in claimed {
            let permit = slots
                .clone()
                .try_acquire_owned()
                .expect("a slot per claimed action");
            in_flight.lock().unwrap().insert(action.id);
            let job = Job {
                outbox: self.outbox.clone(),
                services: self.services.clone(),
                max_attempts: self.settings.max_attempts,
                retry: self.settings.retry,
            };
            let in_flight = in_flight.clone();
            tasks.spawn(async move {
                let id = action.id;
                job.process(action).await;
                in_flight.lock().unwrap().remove(&id);
                drop(permit);
            });
        }
        Ok(filled)
    }
}

/// Everything one action's task needs.
struct Job {
    outbox: Outbox,
    services: Arc<Services>,
    max_attempts: i32,
    retry: super::RetryPolicy,
}

impl Job {
    async fn process(&self, action: Action) {
        let metrics = &self.services.metrics;
        metrics.in_flight(1);
        let outcome = if action.status == "compensating" {
            let error = action
                .last_error
                .clone()
                .unwrap_or_else(|| "unknown error".into());
            self.compensate(&action, &error).await
        } else {
            self.perform(&action).await
        };
        if let Err(e) = outcome {
            tracing::warn!(action = action.id, error = %e, "could not record the outcome; the lease will expire and the action run again");
        }
        metrics.in_flight(-1);
    }

    async fn perform(&self, action: &Action) -> sqlx::Result<()> {
        let metrics = &self.services.metrics;
        match actions::perform(&self.services, &self.outbox, action).await {
            Ok(Finish::Result(result)) => {
                if self.outbox.complete(action.id, &result).await? {
                    metrics.action(&action.kind, "done");
                    tracing::info!(action = action.id, kind = %action.kind, "done");
                } else {
                    metrics.action(&action.kind, "lease_lost");
                    tracing::warn!(
                        action = action.id,
                        "lease lost before completion; another replica owns it now"
                    );
                }
            }
            Ok(Finish::Recorded) => {
                metrics.action(&action.kind, "done");
                tracing::info!(action = action.id, kind = %action.kind, "done");
            }
            Err(ActionError::LeaseLost) => {
                metrics.action(&action.kind, "lease_lost");
                tracing::warn!(
                    action = action.id,
                    "lease lost; another replica owns the action now"
                );
            }
            Err(ActionError::Transient(message)) if action.attempts < self.max_attempts => {
                let delay = self.retry.delay(action.attempts);
                if self.outbox.retry_later(action.id, &message, delay).await? {
                    metrics.action(&action.kind, "retried");
                    tracing::info!(action = action.id, error = %message, retry_in_ms = delay.as_millis() as u64, "transient failure; will retry");
                }
            }
            Err(error) => {
                let message = match error {
                    ActionError::Transient(m) => format!(
                        "gave up after {} attempts; last error: {m}",
                        action.attempts
                    ),
                    ActionError::Permanent(m) => m,
                    ActionError::LeaseLost => unreachable!("handled above"),
                };
                if self.outbox.begin_compensation(action.id, &message).await? {
                    tracing::warn!(action = action.id, error = %message, "permanent failure; compensating");
                    self.compensate(action, &message).await?;
                }
            }
        }
        Ok(())
    }

    async fn compensate(&self, action: &Action, error: &str) -> sqlx::Result<()> {
        // Cleanup gets as many attempts again as the forward work had.
        let may_retry = action.attempts < self.max_attempts * 2;
        let status =
            actions::compensate(&self.services, &self.outbox, action, error, may_retry).await?;
        self.services.metrics.action(&action.kind, status);
        tracing::warn!(action = action.id, kind = %action.kind, outcome = status, "compensation finished");
        Ok(())
    }
}

/// Forwards NOTIFYs on `orgkeeper_actions` to `wake`. A lost or re-made
/// connection also wakes the loop, since notifications may have been missed;
/// reconnects back off up to 5 s.
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN connection failed; polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen("orgkeeper_actions").await {
            tracing::debug!(error = %e, "LISTEN failed; polling meanwhile");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        wake.notify_one();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wake.notify_one(),
                Ok(None) => wake.notify_one(), // reconnected: notifications may be lost
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection lost; reconnecting");
                    wake.notify_one();
                    break;
                }
            }
        }
    }
}

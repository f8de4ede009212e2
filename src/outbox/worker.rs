//! The listen/poll loop: wake on NOTIFY or the poll timer, sweep expired
//! leases, claim as many actions as there are free slots, perform each in its
//! own task, and record the outcome. Nothing holds a row lock across a call.
//!
//! While an action runs, a heartbeat extends its lease; if the lease is lost
//! (the replica stalled and another took over) the action's task is dropped
//! at once, so a stale task never calls the outside world again.

use super::handlers::{self, ActionError, Finish, Services};
use super::{Action, ActionStatus, Outbox, Outcome};
use crate::config::DaemonSettings;
use futures::FutureExt;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// Tells the daemon to stop: send `true` or drop the sender.
pub type Shutdown = watch::Receiver<bool>;

/// Most actions claimed by one statement.
const MAX_CLAIM: usize = 256;

/// Actions this replica is performing, for releasing them at shutdown.
type InFlight = Arc<Mutex<HashMap<i64, Action>>>;

/// A task handle that aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One daemon replica.
pub struct Daemon {
    outbox: Outbox,
    services: Arc<Services>,
    settings: DaemonSettings,
    listen_url: Option<String>,
}

/// Waits until shutdown is requested (a dropped sender counts as a request).
async fn stopping(shutdown: &mut Shutdown) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

fn stopped(shutdown: &Shutdown) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
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
            listen_url: None,
        }
    }

    /// LISTENs on its own connection to `url` instead of one from the pool:
    /// for a pool that goes through a transaction-pooling PgBouncer, where a
    /// LISTEN would be lost when the server connection is handed to another
    /// client. `None` keeps the pool.
    pub fn listen_on(mut self, url: Option<String>) -> Self {
        self.listen_url = url;
        self
    }

    /// Runs until `shutdown`; then stops claiming, lets in-flight actions
    /// finish within the grace period and releases the rest.
    pub async fn run(self, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let wake = Arc::new(Notify::new());
        // Aborted when this future ends or is dropped: a killed daemon leaves no listener behind.
        let source = match &self.listen_url {
            Some(url) => ListenSource::Direct(url.clone()),
            None => ListenSource::Pool(self.services.pool.clone()),
        };
        let listener = AbortOnDrop(tokio::spawn(listen(source, wake.clone(), shutdown.clone())));
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let in_flight: InFlight = Arc::default();
        let mut tasks = JoinSet::new();
        let mut last_sweep: Option<Instant> = None;
        let mut db_backoff = Duration::from_millis(100);
        tracing::info!(worker = %self.settings.worker_id, concurrency = self.settings.concurrency, "daemon started");

        let mut waiting = Waiting::No;
        while !stopped(&shutdown) {
            while tasks.try_join_next().is_some() {}
            match self
                .tick(&slots, &in_flight, &mut tasks, &mut last_sweep)
                .await
            {
                Ok(true) => {
                    db_backoff = Duration::from_millis(100);
                    if waiting != Waiting::No {
                        if let Err(e) = self.outbox.busy().await {
                            tracing::debug!(error = %e, "could not record that the daemon is busy");
                        }
                        waiting = Waiting::No;
                    }
                    continue; // every free slot was filled: more may be due right away
                }
                Ok(false) => {
                    db_backoff = Duration::from_millis(100);
                    // Free slots and nothing more due: the wake-up handshake
                    // (migrations/V11) before waiting, so no insert committing
                    // meanwhile is missed.
                    match self.start_waiting(waiting).await {
                        Ok(Waiting::Settled) if waiting != Waiting::Settled => {
                            waiting = Waiting::Settled;
                            continue; // one last claim sees every settled insert
                        }
                        Ok(Waiting::Settling(tries)) => {
                            waiting = Waiting::Settling(tries);
                            tokio::select! {
                                _ = tokio::time::sleep(SETTLE_PAUSE * tries) => {}
                                _ = wake.notified() => {}
                                _ = stopping(&mut shutdown) => {}
                            }
                            continue;
                        }
                        Ok(state) => waiting = state,
                        Err(e) => {
                            tracing::debug!(error = %e, "wake-up handshake failed; the poll covers");
                            waiting = Waiting::No;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = db_backoff.as_millis() as u64, "cannot reach the outbox; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(db_backoff) => {}
                        _ = stopping(&mut shutdown) => {}
                    }
                    db_backoff = (db_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = stopping(&mut shutdown) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
            // Re-announced (and re-settled) when the next claim finds nothing.
            if waiting == Waiting::Settled {
                waiting = Waiting::Announced;
            }
        }
        if let Err(e) = self.outbox.busy().await {
            tracing::debug!(error = %e, "could not withdraw the waiting mark; it expires");
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
            let unfinished: Vec<Action> =
                in_flight.lock().unwrap().drain().map(|(_, a)| a).collect();
            for action in unfinished {
                match self.outbox.release(&action).await {
                    Ok(true) => self
                        .services
                        .metrics
                        .action(&action.kind, Outcome::Released),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(action = action.id, error = %e, "could not release; its lease will expire")
                    }
                }
            }
        }
        drop(listener);
        tracing::info!("daemon stopped");
        Ok(())
    }

    /// One step of the wake-up handshake from `state`: record this replica
    /// as waiting (valid for a few polls), then check that no inserting
    /// transaction is open. Gives up settling after a few tries (an
    /// application transaction kept open; the poll covers what it inserted).
    async fn start_waiting(&self, state: Waiting) -> sqlx::Result<Waiting> {
        if matches!(state, Waiting::No | Waiting::Announced) {
            let valid_for = (self.settings.poll * 3).max(Duration::from_secs(10));
            self.outbox.wait_for_work(valid_for).await?;
        }
        if state == Waiting::Settled {
            return Ok(Waiting::Settled);
        }
        if self.outbox.inserts_settled().await? {
            return Ok(Waiting::Settled);
        }
        Ok(match state {
            Waiting::Settling(tries) if tries >= SETTLE_TRIES => {
                tracing::debug!(
                    "inserting transactions stay open; waiting with the poll as the safety net"
                );
                Waiting::Settled
            }
            Waiting::Settling(tries) => Waiting::Settling(tries + 1),
            _ => Waiting::Settling(1),
        })
    }

    /// One round: sweep if due, then claim for every free slot. Returns
    /// whether every free slot was filled (so more work may be waiting).
    async fn tick(
        &self,
        slots: &Arc<Semaphore>,
        in_flight: &InFlight,
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
        let mut claimed = self.outbox.claim(free).await?;
        self.services.metrics.claim_latency(started.elapsed());
        if let Err(e) = handlers::prepare(&self.services, &self.outbox, &mut claimed).await {
            // Not fatal: each handler saves its own checkpoint when it finds none.
            tracing::debug!(error = %e, "could not prepare the claimed batch");
        }
        let filled = claimed.len() == free;
        for action in claimed {
            let permit = slots
                .clone()
                .try_acquire_owned()
                .expect("a slot per claimed action");
            in_flight.lock().unwrap().insert(action.id, action.clone());
            let running = self.outbox.running();
            let job = Job {
                outbox: self.outbox.clone(),
                services: self.services.clone(),
                settings: self.settings.clone(),
            };
            let in_flight = in_flight.clone();
            tasks.spawn(async move {
                let id = action.id;
                job.run(action).await;
                in_flight.lock().unwrap().remove(&id);
                drop((running, permit));
            });
        }
        Ok(filled)
    }
}

/// Where a replica is in the wake-up handshake (see `Daemon::start_waiting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Claiming with every slot busy, or not yet announced.
    No,
    /// Announced as waiting earlier; to be refreshed before waiting again.
    Announced,
    /// Announced; inserting transactions were still open on this many checks.
    Settling(u32),
    /// Announced and no inserting transaction open: after one more claim,
    /// anything new notifies.
    Settled,
}

/// Pause between checks while inserting transactions are open (times the try).
const SETTLE_PAUSE: Duration = Duration::from_millis(2);
/// Checks before waiting anyway (with the poll as the safety net).
const SETTLE_TRIES: u32 = 25;

/// Everything one action's task needs.
struct Job {
    outbox: Outbox,
    services: Arc<Services>,
    settings: DaemonSettings,
}

impl Job {
    /// Performs the action while a heartbeat keeps its lease; abandons it
    /// the moment the lease is lost.
    async fn run(&self, action: Action) {
        let metrics = &self.services.metrics;
        metrics.in_flight(1);
        let work = async {
            if action.status == ActionStatus::Compensating.as_str() {
                let error = action
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "unknown error".into());
                self.compensate(&action, &error).await
            } else {
                self.perform(&action).await
            }
        };
        tokio::select! {
            outcome = work => {
                if let Err(e) = outcome {
                    tracing::warn!(action = action.id, error = %e, "could not record the outcome; the lease will expire and the action run again");
                }
            }
            () = self.heartbeat(&action) => {
                metrics.action(&action.kind, Outcome::LeaseLost);
                tracing::warn!(action = action.id, "lease lost (another replica took over); abandoning the action");
            }
        }
        metrics.in_flight(-1);
    }

    /// Extends the lease every third of its length; returns when it is lost.
    async fn heartbeat(&self, action: &Action) {
        let mut tick = tokio::time::interval(self.settings.lease / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.outbox.extend_lease(action).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(action = action.id, error = %e, "heartbeat failed; trying again")
                }
            }
        }
    }

    /// The handler's outcome, with a time limit, and a panic turned into a permanent failure.
    async fn attempt(&self, action: &Action) -> Result<Finish, ActionError> {
        if action.attempts > self.settings.max_attempts {
            return Err(ActionError::Permanent(format!(
                "gave up after {} claims without a recorded outcome (crashed or stalled replicas)",
                action.attempts - 1
            )));
        }
        let handler = AssertUnwindSafe(handlers::perform(&self.services, &self.outbox, action))
            .catch_unwind();
        match tokio::time::timeout(self.settings.action_timeout, handler).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(ActionError::Permanent(format!(
                "the handler panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            ))),
            Err(_) => Err(ActionError::Transient(format!(
                "did not finish within {} s",
                self.settings.action_timeout.as_secs()
            ))),
        }
    }

    async fn perform(&self, action: &Action) -> sqlx::Result<()> {
        let metrics = &self.services.metrics;
        match self.attempt(action).await {
            Ok(Finish::Result(result)) => {
                if self.outbox.complete(action, &result).await? {
                    metrics.action(&action.kind, Outcome::Done);
                    tracing::info!(action = action.id, kind = %action.kind, "done");
                } else {
                    metrics.action(&action.kind, Outcome::LeaseLost);
                    tracing::warn!(
                        action = action.id,
                        "lease lost before completion; another replica owns it now"
                    );
                }
            }
            Ok(Finish::Recorded) => {
                metrics.action(&action.kind, Outcome::Done);
                tracing::info!(action = action.id, kind = %action.kind, "done");
            }
            Err(ActionError::LeaseLost) => {
                metrics.action(&action.kind, Outcome::LeaseLost);
                tracing::warn!(
                    action = action.id,
                    "lease lost; another replica owns the action now"
                );
            }
            Err(ActionError::Transient(message))
                if action.attempts < self.settings.max_attempts =>
            {
                let delay = self.settings.retry.delay(action.attempts);
                if self.outbox.retry_later(action, &message, delay).await? {
                    metrics.action(&action.kind, Outcome::Retried);
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
                if self.outbox.begin_compensation(action, &message).await? {
                    tracing::warn!(action = action.id, error = %message, "permanent failure; compensating");
                    self.compensate(action, &message).await?;
                }
            }
        }
        Ok(())
    }

    async fn compensate(&self, action: &Action, error: &str) -> sqlx::Result<()> {
        // Cleanup gets as many attempts again as the forward work had.
        let may_retry = action.attempts < self.settings.max_attempts * 2;
        let outcome =
            handlers::compensate(&self.services, &self.outbox, action, error, may_retry).await?;
        self.services.metrics.action(&action.kind, outcome);
        tracing::warn!(action = action.id, kind = %action.kind, outcome = outcome.as_str(), "compensation finished");
        Ok(())
    }
}

/// Where the LISTEN connection comes from.
enum ListenSource {
    /// A connection of the daemon's pool (a direct database URL).
    Pool(sqlx::PgPool),
    /// Its own connection to this URL (`ORGKEEPER_LISTEN_DATABASE_URL`).
    Direct(String),
}

/// Forwards NOTIFYs on `orgkeeper_actions` to `wake`. A lost or re-made
/// connection also wakes the loop, since notifications may have been missed;
/// reconnects back off up to 5 s.
async fn listen(source: ListenSource, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut backoff = Duration::from_millis(100);
    while !stopped(&shutdown) {
        let connected = async {
            let mut listener = match &source {
                ListenSource::Pool(pool) => PgListener::connect_with(pool).await?,
                ListenSource::Direct(url) => PgListener::connect(url).await?,
            };
            listener.listen("orgkeeper_actions").await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match connected.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "LISTEN failed; polling meanwhile");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
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

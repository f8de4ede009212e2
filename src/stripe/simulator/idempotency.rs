//! Stripe's idempotency keys: the store of first results, the reservation
//! a request holds while it executes, and its release on an early return.

use super::{IdemEntry, Inner, Shared, IDEMPOTENCY_TTL};
use std::sync::Arc;
use std::time::Instant;

impl Inner {
    /// Looks up or reserves an idempotency key.
    pub(super) fn reserve(&mut self, key: &str, fingerprint: &str) -> Reservation {
        let now = Instant::now();
        if let Some(IdemEntry::Done { expires, .. }) = self.idempotency.get(key) {
            if *expires <= now {
                self.idempotency.remove(key);
            }
        }
        match self.idempotency.get(key) {
            Some(IdemEntry::InFlight) => Reservation::InFlight,
            Some(IdemEntry::Done {
                fingerprint: stored,
                status,
                body,
                request_id,
                ..
            }) => {
                if stored == fingerprint {
                    Reservation::Replay {
                        status: *status,
                        body: body.clone(),
                        original_request: request_id.clone(),
                    }
                } else {
                    Reservation::Mismatch
                }
            }
            None => {
                if self.idempotency.len() >= 10_000 {
                    self.idempotency.retain(|_, e| match e {
                        IdemEntry::Done { expires, .. } => *expires > now,
                        IdemEntry::InFlight => true,
                    });
                }
                self.idempotency
                    .insert(key.to_string(), IdemEntry::InFlight);
                Reservation::Reserved
            }
        }
    }
}

pub(super) enum Reservation {
    Reserved,
    InFlight,
    Mismatch,
    Replay {
        status: u16,
        body: String,
        original_request: String,
    },
}

/// Releases an idempotency reservation that was not completed (an early
/// return or a panic), so that the key does not stay "in use" forever.
pub(super) struct ReservationGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) key: Option<String>,
}

impl ReservationGuard {
    /// Stores the executed result under the key.
    pub(super) fn complete(
        mut self,
        fingerprint: String,
        status: u16,
        body: String,
        request_id: String,
    ) {
        if let Some(key) = self.key.take() {
            self.shared.lock().idempotency.insert(
                key,
                IdemEntry::Done {
                    fingerprint,
                    expires: Instant::now() + IDEMPOTENCY_TTL,
                    status,
                    body,
                    request_id,
                },
            );
        }
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut inner = self.shared.lock();
            if matches!(inner.idempotency.get(&key), Some(IdemEntry::InFlight)) {
                inner.idempotency.remove(&key);
            }
        }
    }
}

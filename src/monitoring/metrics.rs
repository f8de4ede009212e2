//! The daemon's Prometheus metrics: counters and histograms recorded by the
//! worker and the handlers, rendered as Prometheus text.

use crate::outbox::Outcome;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// A call to an external service, as its latency histogram labels it.
pub trait ExternalCall: Copy + Into<&'static str> {
    /// The service called (the `service` label: `litellm`, `stripe`).
    const SERVICE: &'static str;
}

impl ExternalCall for crate::litellm::Call {
    const SERVICE: &'static str = "litellm";
}

impl ExternalCall for crate::stripe::Call {
    const SERVICE: &'static str = "stripe";
}

/// The daemon's counters and histograms, shared by its tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    actions: Mutex<BTreeMap<(String, Outcome), u64>>,
    claim: Mutex<Histogram>,
    calls: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    in_flight: AtomicI64,
}

impl Metrics {
    /// Counts an action outcome.
    pub fn action(&self, kind: &str, outcome: Outcome) {
        *self
            .actions
            .lock()
            .unwrap()
            .entry((kind.to_string(), outcome))
            .or_default() += 1;
    }

    /// Records how long one claim statement took.
    pub fn claim_latency(&self, elapsed: Duration) {
        self.claim.lock().unwrap().observe(elapsed.as_secs_f64());
    }

    /// Records how long one external call took.
    pub fn call_latency<C: ExternalCall>(&self, call: C, elapsed: Duration) {
        self.calls
            .lock()
            .unwrap()
            .entry((C::SERVICE, call.into()))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Adjusts the number of actions being performed now.
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// How many actions ended with `outcome` (all kinds).
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.actions
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, o), _)| *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// The Prometheus text exposition, with queue depth by status read from the database.
    pub fn render(&self, queue_depth: &[(String, i64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP orgkeeper_actions_total Actions finished by this replica, by kind and outcome.\n");
        out.push_str("# TYPE orgkeeper_actions_total counter\n");
        for ((kind, outcome), n) in self.actions.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "orgkeeper_actions_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP orgkeeper_claim_duration_seconds Time of one claim statement.\n");
        out.push_str("# TYPE orgkeeper_claim_duration_seconds histogram\n");
        write_histogram(
            &mut out,
            "orgkeeper_claim_duration_seconds",
            "",
            &self.claim.lock().unwrap(),
        );
        out.push_str("# HELP orgkeeper_external_call_duration_seconds Time of one call to LiteLLM or Stripe.\n");
        out.push_str("# TYPE orgkeeper_external_call_duration_seconds histogram\n");
        for ((service, call), h) in self.calls.lock().unwrap().iter() {
            let labels = format!("service=\"{service}\",call=\"{call}\",");
            write_histogram(
                &mut out,
                "orgkeeper_external_call_duration_seconds",
                &labels,
                h,
            );
        }
        out.push_str("# HELP orgkeeper_queue_depth Unfinished outbox actions, by status.\n");
        out.push_str("# TYPE orgkeeper_queue_depth gauge\n");
        for (status, n) in queue_depth {
            let _ = writeln!(out, "orgkeeper_queue_depth{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP orgkeeper_in_flight Actions this replica is performing now.\n");
        out.push_str("# TYPE orgkeeper_in_flight gauge\n");
        let _ = writeln!(
            out,
            "orgkeeper_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", h.count);
    let trimmed = labels.trim_end_matches(',');
    let braces = if trimmed.is_empty() {
        String::new()
    } else {
        format!("{{{trimmed}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

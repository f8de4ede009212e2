//! When to try a failed action again.

use rand::RngExt;
use std::time::Duration;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl RetryPolicy {
    /// Delay before the attempt after `attempts` failed ones: `base · 2^(attempts-1)`,
    /// capped at `max`, then scaled by a random factor in [0.5, 1.0] so that
    /// replicas retrying together spread out.
    pub fn delay(&self, attempts: i32) -> Duration {
        let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
        let raw = self.base.saturating_mul(1u32 << exponent).min(self.max);
        raw.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_capped_and_are_jittered_downwards_only() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for (attempts, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = policy.delay(attempts).as_millis() as u64;
                assert!(
                    d <= ceiling && d >= ceiling / 2,
                    "attempt {attempts}: {d} ms"
                );
            }
        }
    }
}

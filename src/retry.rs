//! The one backoff: jittered exponential delays between tries, for the loops that wait for a peer to
//! come back (IMDS polls, Docker, the ECS container instance look-up). AWS SDK calls retry in the SDK's
//! own standard retry layer (configured in `aws`), and what their final error means is
//! `aws::classify`'s answer.

use std::time::Duration;

use rand::RngExt as _;

/// A periodic call's next wait: uniformly random within ±20 % of `period`, so a fleet started
/// together does not call AWS in step.
pub fn jittered(period: Duration) -> Duration {
    let low = period.mul_f64(0.8).as_nanos();
    let high = period.mul_f64(1.2).as_nanos();
    if high <= low {
        return period;
    }
    let nanos = rand::rng().random_range(low..=high);
    Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
}

/// Exponential backoff with full jitter, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in [base/2, min(cap, base·2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let low = (self.base / 2).min(ceiling);
        if ceiling <= low {
            return ceiling;
        }
        let nanos = rand::rng().random_range(low.as_nanos()..=ceiling.as_nanos());
        Duration::from_nanos(nanos.min(u64::MAX as u128) as u64)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_secs(2))
        );
        assert!(delays[0] <= Duration::from_millis(100));
        b.reset();
        assert_eq!(b.attempts(), 0);
    }
}

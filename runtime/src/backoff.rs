//! Exponential backoff with jitter, the one every retry loop uses.

use std::time::Duration;

/// Doubles from `initial` up to `max` on each failure; [`Backoff::reset`]
/// after a success. Each wait is jittered by up to ±20 % so replicas that
/// failed together do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; the one after it is twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base)
    }

    /// The wait [`Backoff::next_wait`] would start from, without jitter.
    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps [`Backoff::next_wait`], or less if `shutdown` fires first;
    /// `false` when it did.
    pub async fn wait(&mut self, shutdown: &mut crate::shutdown::Shutdown) -> bool {
        let wait = self.next_wait();
        tokio::select! {
            _ = shutdown.requested() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

fn jitter(d: Duration) -> Duration {
    // A cheap spread from the clock's nanoseconds; no RNG needed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let spread = (nanos % 401) as f64 / 1000.0 - 0.2;
    d.mul_f64(1.0 + spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<Duration> = (0..4).map(|_| b.next_wait()).collect();
        for (w, base) in waits.iter().zip([100u64, 200, 350, 350]) {
            let base = Duration::from_millis(base);
            assert!(
                *w >= base.mul_f64(0.79) && *w <= base.mul_f64(1.21),
                "{w:?} around {base:?}"
            );
        }
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
    }
}

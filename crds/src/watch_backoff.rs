//! How the operator's and the agents' watches retry while the API server is unreachable.
//!
//! kube's default backoff grows to 30 s, so after an outage of a minute every watch waits up
//! to 30 s more, and a live change, which needs several round trips between agents and
//! operator (NodeNetwork status → IPPool phase → NodeNetwork status …), took another 60–90 s to
//! finish. Capped at 5 s (with jitter, so thousands of nodes do not retry in step), a cluster
//! follows again within seconds of the server's return, at the cost of one connection attempt
//! per watch every 5 s while it is down.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const FIRST: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(5);

/// Exponential backoff from 0.5 s, doubling, capped at 5 s, with jitter; reset by the watcher
/// on its first success.
pub struct WatchBackoff {
    builder: backon::ExponentialBuilder,
    current: backon::ExponentialBackoff,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(FIRST)
            .with_max_delay(MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        WatchBackoff { current: backon::BackoffBuilder::build(builder), builder }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.current = backon::BackoffBuilder::build(self.builder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_at_most_five_seconds_and_reset_starts_over() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(12).collect();
        assert_eq!(delays.len(), 12, "never gives up");
        // Jitter adds up to one delay on top: the cap with jitter is below 2 × MAX.
        assert!(delays.iter().all(|d| *d <= MAX * 2), "{delays:?}");
        assert!(delays[11] >= MAX, "reaches the cap: {delays:?}");
        b.reset();
        assert!(b.next().is_some_and(|d| d < MAX), "starts small again");
    }
}

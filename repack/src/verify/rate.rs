//! A byte-rate limit for verification reads, so a scrub of a production
//! store leaves bandwidth to readers. Reads are paced, not cut: each one
//! starts no earlier than the previous ones' bytes allow at the rate.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub struct ByteRate {
    bytes_per_second: u64,
    /// When the next read may start.
    next: Mutex<Option<Instant>>,
}

impl ByteRate {
    /// `None` for a zero rate (which would never read anything).
    pub fn new(bytes_per_second: u64) -> Option<Self> {
        (bytes_per_second > 0).then(|| Self {
            bytes_per_second,
            next: Mutex::new(None),
        })
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Waits until `bytes` more may be read.
    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_reads_to_the_rate() {
        let r = ByteRate::new(1000).unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            r.take(500).await;
        }
        // Five reads of 500 B at 1000 B/s: the fifth starts after 2 s.
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert!(ByteRate::new(0).is_none());
    }
}

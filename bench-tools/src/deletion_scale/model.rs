//! The simulated files: their uids, dates and bytes (all derived from the
//! seed, so the script can check what the retriever serves), and which are
//! live on a given simulated day.

use des_format::Timestamp;
use des_storage::retention::{date_of_day, day_of};
use rand::Rng;
use rand::rngs::StdRng;

/// Smallest and largest file, bytes.
pub const MIN_SIZE: usize = 200;
pub const MAX_SIZE: usize = 2000;
/// Files are created at this hour (UTC) of their day; repack runs at noon.
const CREATED_HOUR: i64 = 10;
const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The uid of file `i` of simulated day `day`: all digits, unique over the
/// run, a multiple of `2^n_bits` so that it routes to shard 0 (numeric
/// uids route by value, SPEC §3.1): one shard per day, however many files.
pub fn uid(day: usize, i: usize, n_bits: u8) -> String {
    format!("{}", ((day as u64 + 1) * 10_000_000 + i as u64) << n_bits)
}

/// A uid no packed file has, on shard 0 too (start-up tombstones beyond
/// the live files).
pub fn synthetic_uid(n: usize, n_bits: u8) -> String {
    format!("{}", (900_000_000_000 + n as u64) << n_bits)
}

/// FNV-1a of the seed and the uid: the file's own RNG seed.
fn file_seed(seed: u64, uid: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(uid.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64 step.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes of file `uid`: MIN_SIZE..=MAX_SIZE of them, from (seed, uid)
/// alone. Odd-sized files are text-like (compressible), even-sized random.
pub fn content(seed: u64, uid: &str) -> Vec<u8> {
    let mut s = file_seed(seed, uid);
    let span = (MAX_SIZE - MIN_SIZE + 1) as u64;
    let size = MIN_SIZE + (next(&mut s) % span) as usize;
    let mut out = Vec::with_capacity(size + 8);
    if size % 2 == 1 {
        let line = format!("file {uid} of the deletion benchmark, seed {seed}\n");
        while out.len() < size {
            out.extend_from_slice(line.as_bytes());
        }
    } else {
        while out.len() < size {
            out.extend_from_slice(&next(&mut s).to_le_bytes());
        }
    }
    out.truncate(size);
    out
}

/// One simulated day's files.
#[derive(Debug)]
pub struct Day {
    /// Days since 1970-01-01 and `YYYYMMDD`.
    pub day_number: i64,
    pub date: u32,
    pub created_at: Timestamp,
    /// Indexes of files neither deleted nor expired (nor set aside).
    pub live: Vec<u32>,
    pub expired: bool,
}

/// Every simulated day and which of their files are live.
#[derive(Debug)]
pub struct Model {
    pub days: Vec<Day>,
    pub retention_days: usize,
}

impl Model {
    /// `count` days ending today (UTC, real clock), `files` files each.
    pub fn new(count: usize, files: usize, retention_days: usize, now: Timestamp) -> Self {
        let today = day_of(now);
        let days = (0..count)
            .map(|k| {
                let day_number = today - (count as i64 - 1) + k as i64;
                let midnight = day_number * 24 * MICROS_PER_HOUR;
                Day {
                    day_number,
                    date: date_of_day(day_number).unwrap_or(0),
                    created_at: Timestamp::from_micros(midnight + CREATED_HOUR * MICROS_PER_HOUR),
                    live: (0..files as u32).collect(),
                    expired: false,
                }
            })
            .collect();
        Self {
            days,
            retention_days,
        }
    }

    /// Noon (UTC) of day `k`: the repacker's clock that day.
    pub fn noon(&self, k: usize) -> Timestamp {
        let d = self.days.get(k).map_or(0, |d| d.day_number);
        Timestamp::from_micros(d * 24 * MICROS_PER_HOUR + 12 * MICROS_PER_HOUR)
    }

    /// The day whose files a rule of `retention_days` expires on day `k`
    /// (a file of day D is expired from D + N + 1 on), marked expired;
    /// returns how many of its files were still live.
    pub fn expire_on(&mut self, k: usize) -> Option<(usize, usize)> {
        let j = k.checked_sub(self.retention_days + 1)?;
        let d = self.days.get_mut(j)?;
        d.expired = true;
        let n = d.live.len();
        d.live.clear();
        Some((j, n))
    }

    /// Days up to `k` not expired.
    fn live_days(&self, k: usize) -> std::ops::Range<usize> {
        k.saturating_sub(self.retention_days)..(k + 1).min(self.days.len())
    }

    pub fn live_count(&self, k: usize) -> usize {
        self.days[self.live_days(k)]
            .iter()
            .map(|d| d.live.len())
            .sum()
    }

    /// Takes a random live file of the days live on day `k` out of the
    /// live set: `(day index, file index)`.
    pub fn take_random(&mut self, k: usize, rng: &mut StdRng) -> Option<(usize, u32)> {
        let total = self.live_count(k);
        if total == 0 {
            return None;
        }
        let mut r = rng.gen_range(0..total);
        for j in self.live_days(k) {
            let d = &mut self.days[j];
            if r < d.live.len() {
                return Some((j, d.live.swap_remove(r)));
            }
            r -= d.live.len();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn content_is_deterministic_and_sized() {
        let a = content(42, "160000016");
        assert_eq!(a, content(42, "160000016"));
        assert_ne!(a, content(43, "160000016"));
        assert!((MIN_SIZE..=MAX_SIZE).contains(&a.len()));
    }

    #[test]
    fn days_end_today_and_expire_after_the_rule() {
        let now = Timestamp::parse_rfc3339("2026-12-06T03:00:00Z").unwrap();
        let mut m = Model::new(40, 10, 30, now);
        assert_eq!(m.days[39].date, 20261206);
        assert_eq!(m.days[0].date, 20261028);
        assert_eq!(m.noon(39).to_rfc3339(), "2026-12-06T12:00:00Z");
        assert_eq!(m.expire_on(30), None);
        // Day 0 is expired from day 31 on (D + 30 + 1).
        assert_eq!(m.expire_on(31), Some((0, 10)));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10 * 31 {
            let (j, _) = m.take_random(31, &mut rng).unwrap();
            assert!((1..=31).contains(&j));
        }
        assert_eq!(m.take_random(31, &mut rng), None);
    }
}

//! Reproducible random sampling of entries.
//!
//! Each entry is chosen by a hash of (seed, shard key, uid) rather than by a
//! random stream, so the same seed picks the same entries whatever order the
//! shards are checked in, and the hash is spelled out here rather than taken
//! from a library whose output may change between versions.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Share of entries to check, in `(0, 100]`.
    pub percent: f64,
    pub seed: u64,
}

impl Sample {
    pub fn new(percent: f64, seed: u64) -> Result<Self, String> {
        if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
            Ok(Self { percent, seed })
        } else {
            Err(format!(
                "sample must be a percentage in (0, 100], got {percent}"
            ))
        }
    }

    pub fn selects(&self, shard_key: &str, uid: &str) -> bool {
        if self.percent >= 100.0 {
            return true;
        }
        let h = splitmix64(
            self.seed
                ^ splitmix64(fnv1a(shard_key.as_bytes()) ^ fnv1a(uid.as_bytes()).rotate_left(32)),
        );
        // The top 53 bits as a uniform fraction in [0, 1).
        let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
        unit * 100.0 < self.percent
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_close_to_the_percentage_and_reproducible() {
        let s = Sample::new(25.0, 7).unwrap();
        let picked: Vec<bool> = (0..10_000)
            .map(|i| s.selects("20240101/0A.des", &format!("u{i}")))
            .collect();
        let n = picked.iter().filter(|p| **p).count();
        assert!((2200..2800).contains(&n), "{n}");
        let again: Vec<bool> = (0..10_000)
            .map(|i| s.selects("20240101/0A.des", &format!("u{i}")))
            .collect();
        assert_eq!(picked, again);
        let other = Sample::new(25.0, 8).unwrap();
        let differs =
            (0..10_000).any(|i| other.selects("20240101/0A.des", &format!("u{i}")) != picked[i]);
        assert!(differs);
    }

    #[test]
    fn bounds() {
        assert!(Sample::new(0.0, 0).is_err());
        assert!(Sample::new(100.5, 0).is_err());
        assert!(Sample::new(f64::NAN, 0).is_err());
        let all = Sample::new(100.0, 1).unwrap();
        assert!((0..1000).all(|i| all.selects("k", &i.to_string())));
    }
}

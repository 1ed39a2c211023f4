//! Durations in configuration files are whole milliseconds (`*_ms` keys):
//! YAML and TOML have no duration type, and one unit everywhere avoids
//! "was that seconds?" mistakes.

/// `Duration` as an integer number of milliseconds.
pub mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `Option<Duration>` as milliseconds where `0` means "none": TOML has no
/// null, so zero is the one spelling of "disabled" both formats share.
pub mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        s.serialize_u64(ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let ms = Option::<u64>::deserialize(d)?.unwrap_or(0);
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    }
}

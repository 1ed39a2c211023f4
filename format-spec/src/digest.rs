//! 256-bit content digests of original (uncompressed) bytes.

use sha2::Digest as _;

use crate::error::{FormatError, Result};

pub const DIGEST_LEN: usize = 32;
pub type ContentDigest = [u8; DIGEST_LEN];

/// Recorded in every v3 trailer and in `_des/store.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DigestAlgorithm {
    #[default]
    Blake3,
    /// For stores created in FIPS mode.
    Sha256,
}

impl DigestAlgorithm {
    pub const fn code(self) -> u8 {
        match self {
            Self::Blake3 => 1,
            Self::Sha256 => 2,
        }
    }

    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(Self::Blake3),
            2 => Ok(Self::Sha256),
            other => Err(FormatError::Unsupported(format!(
                "digest algorithm code {other}"
            ))),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "blake3" => Ok(Self::Blake3),
            "sha256" => Ok(Self::Sha256),
            other => Err(FormatError::Unsupported(format!(
                "digest algorithm {other:?}"
            ))),
        }
    }

    pub fn hasher(self) -> Digester {
        match self {
            Self::Blake3 => Digester::Blake3(Box::new(blake3::Hasher::new())),
            Self::Sha256 => Digester::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn digest(self, data: &[u8]) -> ContentDigest {
        let mut h = self.hasher();
        h.update(data);
        h.finalize()
    }
}

/// Incremental digest, so big files are hashed while they stream.
#[derive(Clone)]
pub enum Digester {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Digester {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Blake3(h) => {
                h.update(data);
            }
            Self::Sha256(h) => h.update(data),
        }
    }

    pub fn finalize(self) -> ContentDigest {
        match self {
            Self::Blake3(h) => *h.finalize().as_bytes(),
            Self::Sha256(h) => h.finalize().into(),
        }
    }
}

/// SHA-256 hex, as the legacy format names its big files.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(
            hex::encode(DigestAlgorithm::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(DigestAlgorithm::Blake3.digest(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        for alg in [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256] {
            assert_eq!(DigestAlgorithm::from_code(alg.code()).unwrap(), alg);
            assert_eq!(DigestAlgorithm::from_name(alg.name()).unwrap(), alg);
        }
    }
}

//! Content identity: the xxh3-128 hash of a file's bytes.
//!
//! The hash says whether a file at a new path is a photo already indexed (a move or a copy) and
//! whether a file whose size or time changed really has new content. xxh3 reads at memory speed,
//! so hashing is limited by the disk, not the CPU; 128 bits make an accidental collision in a
//! library of millions of files negligible (it is not a defence against crafted collisions, which
//! a personal library does not need).
//!
//! [`ContentHash`] is persisted by the store (as 32 lower-case hex digits in serde): changing its
//! algorithm or encoding needs a store migration.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// The xxh3-128 hash of a file's whole content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub u128);

impl ContentHash {
    /// Hashes bytes already in memory.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        ContentHash(xxh3_128(bytes))
    }

    /// Hashes a file by streaming it (constant memory). Returns the hash and the number of bytes
    /// read, which may differ from an earlier `stat` if the file is being written.
    pub fn of_file(path: &Path) -> std::io::Result<(Self, u64)> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Xxh3::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok((ContentHash(hasher.digest128()), len))
    }
}

impl fmt::Display for ContentHash {
    /// 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A string that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a content hash (expected 32 hex digits)")]
pub struct ParseContentHashError(pub String);

impl FromStr for ContentHash {
    type Err = ParseContentHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseContentHashError(s.to_string()));
        }
        u128::from_str_radix(s, 16)
            .map(ContentHash)
            .map_err(|_| ParseContentHashError(s.to_string()))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_hash_equals_in_memory_hash() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than the read buffer, with a ragged tail, so several updates are exercised.
        let bytes: Vec<u8> = (0..700_001u32).map(|i| (i * 31 % 251) as u8).collect();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, &bytes).unwrap();
        let (hash, len) = ContentHash::of_file(&path).unwrap();
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(hash, ContentHash::of_bytes(&bytes));
        assert_ne!(hash, ContentHash::of_bytes(&bytes[1..]));
    }

    #[test]
    fn hex_and_serde_round_trip() {
        let h = ContentHash(0x0123_4567_89ab_cdef_0000_0000_0000_00ff);
        let s = h.to_string();
        assert_eq!(s, "0123456789abcdef00000000000000ff");
        assert_eq!(s.parse::<ContentHash>().unwrap(), h);
        assert_eq!(ContentHash(1).to_string().len(), 32, "zero-padded");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), h);
        assert!("xyz".parse::<ContentHash>().is_err());
        assert!("+123456789abcdef00000000000000ff"
            .parse::<ContentHash>()
            .is_err());
        assert!(serde_json::from_str::<ContentHash>("\"12\"").is_err());
    }
}

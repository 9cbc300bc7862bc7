//! Unpredictable-enough numbers for profile IDs and retry jitter, without a
//! dependency: std's `RandomState` is seeded from the OS once per thread and every
//! new instance hashes differently. Nothing here is used for security.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::SystemTime;

pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// A 16-byte ID that is not all zeroes (OTLP treats an all-zero profile ID as invalid).
pub(crate) fn nonzero_id_16() -> Vec<u8> {
    loop {
        let mut id = Vec::with_capacity(16);
        id.extend_from_slice(&random_u64().to_le_bytes());
        id.extend_from_slice(&random_u64().to_le_bytes());
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

/// A uniformly distributed fraction in [0, 1).
pub(crate) fn unit_fraction() -> f64 {
    // The top 53 bits fill an f64 mantissa exactly.
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_fractions_stay_in_range() {
        let ids: std::collections::HashSet<Vec<u8>> = (0..100).map(|_| nonzero_id_16()).collect();
        assert_eq!(ids.len(), 100);
        let fractions: Vec<f64> = (0..1000).map(|_| unit_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        // Not constant: the spread covers most of the interval.
        let min = fractions.iter().cloned().fold(f64::MAX, f64::min);
        let max = fractions.iter().cloned().fold(f64::MIN, f64::max);
        assert!(min < 0.1 && max > 0.9, "{min} {max}");
    }
}

//! Which shard an instance lives on: Kafka's default partitioner, and the
//! runtime's wall clock.

use super::*;

/// Wall clock in epoch milliseconds (the runtime's, never the engine's).
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The shard an instance lives on: the partition Kafka's default (murmur2)
/// partitioner picks for its correlation key, so events keyed by that key
/// land on the instance's shard and can be processed in place.
pub fn shard_of(instance_id: &str, partitions: i32) -> i32 {
    let key = instance_id
        .split_once('/')
        .map_or(instance_id, |(_, key)| key);
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (the Java client's and Kafka Streams' default partitioner;
/// librdkafka's `murmur2_random`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // The Java client's test vectors (as signed 32-bit values).
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(
            shard_of("order-to-cash/o-1", 6),
            shard_of("order-to-cash/o-1", 6)
        );
        let mut seen = BTreeSet::new();
        for i in 0..200 {
            let s = shard_of(&format!("p/k-{i}"), 6);
            assert!((0..6).contains(&s));
            seen.insert(s);
        }
        assert_eq!(seen.len(), 6, "keys spread over every shard");
    }
}

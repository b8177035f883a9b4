//! The label sets of auto mode (`TLDS`, `NAMESPACES`) as the XDP program
//! reads them: arrays of buckets, each of four slots holding a label key
//! ([`TldKey`]) and its fingerprint. A hash map with 64-byte keys costs a
//! 64-byte jhash and compare per lookup; here a lookup hashes only the
//! label's own chunks and reads two buckets through inlined array lookups,
//! then compares the key in the slot whose fingerprint matches: exact.
//!
//! A label lives in one of two buckets chosen by its fingerprint (cuckoo
//! layout). The agent, the only writer, moves labels between their two
//! buckets to make room, writing the new place before clearing the old, so
//! a reader always finds a label in at least one of them. A bucket write is
//! a plain copy, so a lookup racing it may read half of it: then the
//! fingerprint or the key does not match and the lookup says "no" (the
//! name is not taken for an artifact and passes up to the forwarder, which
//! decides it from its own copy of the rules). It never says "yes" for a
//! label that was not in the set.

use crate::name::TldKey;

/// Slots per bucket.
pub const LABEL_SLOTS: usize = 4;

/// One bucket of a label set. `fp` 0 marks a free slot (fingerprints have
/// their low bit set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelBucket {
    pub fp: [u64; LABEL_SLOTS],
    pub label: [TldKey; LABEL_SLOTS],
}

impl LabelBucket {
    pub const EMPTY: LabelBucket = LabelBucket {
        fp: [0; LABEL_SLOTS],
        label: [TldKey { label: [0; 64] }; LABEL_SLOTS],
    };
}

/// Buckets of a set holding up to `capacity` labels: half the slots stay
/// free, where two-choice cuckoo insertion practically never fails.
pub const fn label_bucket_count(capacity: u32) -> u32 {
    let want = (capacity as u64 * 2).div_ceil(LABEL_SLOTS as u64);
    let n = want.next_power_of_two();
    if n < 2 {
        2
    } else {
        n as u32
    }
}

/// Buckets of the TLD set (`MAX_TLDS` labels).
pub const TLD_BUCKETS: u32 = label_bucket_count(crate::abi::MAX_TLDS);
/// Buckets of the namespace set (`MAX_NAMESPACES` labels).
pub const NAMESPACE_BUCKETS: u32 = label_bucket_count(crate::abi::MAX_NAMESPACES);

const SEED: u64 = 0x6a09_e667_f3bc_c908;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// Mixes one 8-byte chunk of a label key into the running state.
#[inline(always)]
pub const fn fp_round(h: u64, chunk: u64) -> u64 {
    let x = (h ^ chunk).wrapping_mul(MUL);
    x ^ (x >> 29)
}

/// The fingerprint of the chunks mixed in (murmur3's finalizer), low bit
/// set so that it is never 0.
#[inline(always)]
pub const fn fp_finish(h: u64) -> u64 {
    let mut x = h;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (x ^ (x >> 33)) | 1
}

/// The start of a fingerprint.
#[inline(always)]
pub const fn fp_start() -> u64 {
    SEED
}

/// Chunk `i` of a label of `n` bytes whose 8 bytes at that place are `v`:
/// the bytes past the label's `n + 1` (length byte and text) zeroed, as
/// they are in a [`TldKey`].
#[inline(always)]
pub const fn label_chunk(v: u64, n: usize, i: usize) -> u64 {
    let keep = (n + 1).saturating_sub(i * 8);
    if keep >= 8 {
        v
    } else {
        v & ((1u64 << ((keep & 7) * 8)) - 1)
    }
}

/// A label key's fingerprint: its chunks up to the one holding its last
/// byte (the rest of the key is zeros).
pub fn label_fp(k: &TldKey) -> u64 {
    let n = (k.label[0] & 63) as usize;
    let mut h = fp_start();
    let mut c = 0;
    while c * 8 <= n {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k.label[c * 8..c * 8 + 8]);
        h = fp_round(h, u64::from_le_bytes(b));
        c += 1;
    }
    fp_finish(h)
}

/// The two buckets of a fingerprint in a set of `mask + 1` buckets;
/// distinct.
#[inline(always)]
pub const fn label_buckets(fp: u64, mask: u32) -> (u32, u32) {
    let b1 = ((fp >> 1) as u32) & mask;
    let mut b2 = ((fp >> 33) as u32) & mask;
    if b2 == b1 {
        b2 = b1 ^ 1;
    }
    (b1 & mask, b2 & mask)
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(core::mem::size_of::<LabelBucket>(), 32 + 4 * 64);
        assert_eq!(TLD_BUCKETS, 2048);
        assert_eq!(NAMESPACE_BUCKETS, 8192);
        assert_eq!(label_bucket_count(0), 2);
    }

    #[test]
    fn fingerprints_differ_and_are_never_zero() {
        let a = label_fp(&TldKey::new(b"com").unwrap());
        let b = label_fp(&TldKey::new(b"COM").unwrap());
        let c = label_fp(&TldKey::new(b"co").unwrap());
        assert_eq!(a, b, "keys are lower-cased");
        assert_ne!(a, c);
        assert_eq!(a & 1, 1);
        for mask in [1u32, 2047] {
            let (x, y) = label_buckets(a, mask);
            assert!(x != y && x <= mask && y <= mask);
        }
    }
}

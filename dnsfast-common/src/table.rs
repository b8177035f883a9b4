//! The pattern table: an exact hash table of label-reversed pattern keys
//! (see [`crate::name`]) that the XDP program reads through inlined array
//! lookups, in place of a longest-prefix-match trie.
//!
//! A trie lookup walks a node per branching bit and compares the key from
//! its first byte at each: 84 ns for a 25-byte name among 100k patterns on
//! the project's machine, a probe here about 30. Here the encoder hashes each label as it places it (its
//! chunks are in registers then anyway); the lookup folds those label
//! hashes, from the name's last label on, into one fingerprint per suffix,
//! and probes the suffixes from the longest down, only at label counts
//! some pattern has (`PATTERN_DEPTHS`). A probe reads two buckets of four slots; a
//! slot whose fingerprint and length match is confirmed byte by byte
//! against the key it stores (keys longer than [`SLOT_KEY_LEN`] keep the
//! rest in `PATTERN_TAILS`). So the rule found is exactly the trie's: the
//! longest pattern that is a suffix of the name at a label boundary.
//!
//! Cuckoo layout: a key lives in one of two buckets chosen by its
//! fingerprint. The agent moves entries between their two buckets to make
//! room, writing the new place before clearing the old, so a reader always
//! finds an entry in at least one of them.

use crate::{abi::Rule, name::MAX_LABELS};

/// Slots per bucket.
pub const BUCKET_SLOTS: usize = 4;
/// Key bytes stored in a slot; longer keys keep the rest in `PATTERN_TAILS`.
pub const SLOT_KEY_LEN: usize = 48;

/// The table's maps: the bucket array is `PATTERNS` (`abi::MAP_PATTERNS`,
/// pinned as `patterns`), with these two beside it.
pub const MAP_PATTERN_DEPTHS: &str = "PATTERN_DEPTHS";
pub const MAP_PATTERN_TAILS: &str = "PATTERN_TAILS";
/// Read-only global: the bucket count minus one (a power of two minus
/// one), set at load time.
pub const GLOBAL_BUCKET_MASK: &str = "DNSFAST_BUCKET_MASK";

/// One bucket: four slots, each a fingerprint, a rule (`action` 0: the
/// slot is free) and the first key bytes. 256 bytes, four cache lines; the
/// fingerprints share the first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub fp: [u64; BUCKET_SLOTS],
    pub rule: [Rule; BUCKET_SLOTS],
    pub key: [[u8; SLOT_KEY_LEN]; BUCKET_SLOTS],
}

impl Bucket {
    pub const EMPTY: Bucket = Bucket {
        fp: [0; BUCKET_SLOTS],
        rule: [Rule {
            action: 0,
            key_len: 0,
        }; BUCKET_SLOTS],
        key: [[0; SLOT_KEY_LEN]; BUCKET_SLOTS],
    };
}

/// Value of `PATTERN_TAILS` (keyed by fingerprint): a whole key, zero padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongKey {
    pub bytes: [u8; crate::abi::KEY_DATA_LEN],
}

/// Most distinct label counts the patterns may have together (search
/// suffixes and hand-written patterns have a handful).
pub const MAX_DEPTHS: usize = 16;

/// Value of `PATTERN_DEPTHS` (one element): the label counts that patterns
/// have, longest first (`depth[..count]`), so a lookup probes only those;
/// and how many patterns have each (the agent's bookkeeping).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Depths {
    pub count: u32,
    pub depth: [u8; MAX_DEPTHS],
    pub patterns: [u32; MAX_LABELS],
}

impl Depths {
    pub const EMPTY: Depths = Depths {
        count: 0,
        depth: [0; MAX_DEPTHS],
        patterns: [0; MAX_LABELS],
    };

    /// Rebuilds `depth` and `count` from `patterns`; false if more than
    /// [`MAX_DEPTHS`] label counts are in use.
    pub fn index(&mut self) -> bool {
        self.depth = [0; MAX_DEPTHS];
        let mut n = 0;
        let mut d = MAX_LABELS;
        while d > 1 {
            d -= 1;
            if self.patterns[d] > 0 {
                if n == MAX_DEPTHS {
                    return false;
                }
                self.depth[n] = d as u8;
                n += 1;
            }
        }
        self.count = n as u32;
        true
    }
}

/// Buckets for a table of `max_patterns`: at most half the slots in use,
/// where two-choice cuckoo insertion practically never fails.
pub const fn bucket_count(max_patterns: u32) -> u32 {
    let want = (max_patterns as u64 * 2).div_ceil(BUCKET_SLOTS as u64);
    let n = want.next_power_of_two();
    if n < 2 {
        2
    } else if n > 1 << 24 {
        1 << 24
    } else {
        n as u32
    }
}

const LABEL_SEED: u64 = 0x510e_527f_ade6_82d1;
const SUFFIX_SEED: u64 = 0x9b05_688c_2b3e_6c1f;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
const MUL2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// Mixes one masked chunk of a label into its hash: one multiply, so the
/// encoder's walk stays cheap. Weak on its own; the suffix fold and
/// [`suffix_fp`] mix further, and a slot is confirmed by its bytes anyway.
#[inline(always)]
pub const fn label_round(h: u64, chunk: u64) -> u64 {
    (h ^ chunk).wrapping_mul(MUL)
}

/// Start of a label's hash.
#[inline(always)]
pub const fn label_hash_start() -> u64 {
    LABEL_SEED
}

/// Chunk `c` of a label of `n` bytes, counted from the label's end: `v`
/// holds the 8 bytes that end `8 * c` bytes before the label does (its
/// `n + 1` bytes: length byte and text). Bytes before the label are
/// zeroed.
#[inline(always)]
pub const fn label_end_chunk(v: u64, n: usize, c: usize) -> u64 {
    let have = (n + 1).saturating_sub(c * 8);
    if have >= 8 {
        v
    } else {
        // The first (lowest, little-endian) 8 - have bytes are not the label's.
        v & !((1u64 << (((8 - have) & 7) * 8)) - 1)
    }
}

/// Start of a suffix fingerprint, before its first label.
#[inline(always)]
pub const fn suffix_start() -> u64 {
    SUFFIX_SEED
}

/// The suffix one label longer: `state` then the label of hash `label`.
/// One multiply per label on the lookup's serial path.
#[inline(always)]
pub const fn suffix_push(state: u64, label: u64) -> u64 {
    let x = state ^ label;
    (x ^ (x >> 31)).wrapping_mul(MUL2)
}

/// The fingerprint of a suffix state.
#[inline(always)]
pub const fn suffix_fp(state: u64) -> u64 {
    state ^ (state >> 29)
}

/// The two buckets of a fingerprint (from its high bits, which the
/// multiplies mix best); distinct.
#[inline(always)]
pub const fn buckets_of(fp: u64, mask: u32) -> (u32, u32) {
    let b1 = ((fp >> 40) as u32) & mask;
    let mut b2 = (((fp >> 16) as u32) ^ ((fp >> 52) as u32)) & mask;
    if b2 == b1 {
        b2 = b1 ^ 1;
    }
    (b1 & mask, b2 & mask)
}

/// The hash of one label: its `n + 1` bytes (`label`, length byte first,
/// as in a key) in chunks from its end, as the encoder reads them.
pub fn label_hash(label: &[u8]) -> u64 {
    let n = label.len() - 1;
    let mut h = label_hash_start();
    let mut c = 0;
    while c * 8 <= n {
        let end = label.len() - c * 8;
        let mut b = [0u8; 8];
        for (i, v) in b.iter_mut().enumerate() {
            if let Some(at) = (end + i).checked_sub(8) {
                *v = label[at];
            }
        }
        h = label_round(h, label_end_chunk(u64::from_le_bytes(b), n, c));
        c += 1;
    }
    h
}

/// The fingerprint of a whole label-reversed key (user space; the XDP
/// program computes the same from the encoder's label hashes). `None` if
/// `key` is not a sequence of labels.
pub fn key_fingerprint(key: &[u8]) -> Option<u64> {
    if key.is_empty() {
        return None;
    }
    let mut state = suffix_start();
    let mut i = 0;
    while i < key.len() {
        let n = key[i] as usize;
        if n == 0 || i + 1 + n > key.len() {
            return None;
        }
        state = suffix_push(state, label_hash(&key[i..i + 1 + n]));
        i += 1 + n;
    }
    Some(suffix_fp(state))
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use crate::{abi::Scratch, name::encode_slice};

    #[test]
    fn bucket_is_four_cache_lines() {
        assert_eq!(core::mem::size_of::<Bucket>(), 256);
    }

    #[test]
    fn bucket_count_leaves_half_the_slots_free() {
        assert_eq!(bucket_count(131_072), 65_536);
        assert_eq!(bucket_count(10), 8);
        assert_eq!(bucket_count(0), 2);
        assert!(bucket_count(u32::MAX) <= 1 << 24);
    }

    #[test]
    fn fingerprints_follow_labels_not_chunks() {
        let a = key_fingerprint(b"\x03com\x07example").unwrap();
        assert_eq!(a, key_fingerprint(b"\x03com\x07example").unwrap());
        assert_ne!(a, key_fingerprint(b"\x03com\x07exampl\x01e").unwrap_or(0));
        assert_ne!(a, key_fingerprint(b"\x07example\x03com").unwrap());
        assert_ne!(a, key_fingerprint(b"\x03com").unwrap());
        assert_eq!(key_fingerprint(b""), None);
        assert_eq!(key_fingerprint(b"\x05com"), None);
        assert_eq!(crate::suffix::label_ends(b"\x03com\x07example").1, 2);
    }

    /// Names built from a few short labels differ in a byte or two: the
    /// fingerprints must still all differ. (A fold that only added weighted
    /// label hashes collided here once in a few hundred keys: a one-byte
    /// label's hash differs from another's in its top bits only.)
    #[test]
    fn similar_keys_have_distinct_fingerprints() {
        let mut labels: std::vec::Vec<std::vec::Vec<u8>> = (b'!'..=b'~')
            .filter(|c| !c.is_ascii_uppercase())
            .map(|c| std::vec![1, c])
            .collect();
        for l in [
            "io", "_t", "com", "svc", "x-1", "local", "cluster", "internal",
        ] {
            let mut k = std::vec![l.len() as u8];
            k.extend_from_slice(l.as_bytes());
            labels.push(k);
        }
        // Every key of up to three labels from these, then of four from
        // the first dozen.
        fn walk(
            labels: &[std::vec::Vec<u8>],
            depth: usize,
            key: &mut std::vec::Vec<u8>,
            seen: &mut std::collections::HashMap<u64, std::vec::Vec<u8>>,
        ) {
            if !key.is_empty() {
                let fp = key_fingerprint(key).unwrap();
                if let Some(other) = seen.insert(fp, key.clone()) {
                    assert_eq!(&other, key, "fingerprint collision");
                }
            }
            if depth == 0 {
                return;
            }
            for l in labels {
                let at = key.len();
                key.extend_from_slice(l);
                walk(labels, depth - 1, key, seen);
                key.truncate(at);
            }
        }
        let mut seen = std::collections::HashMap::new();
        walk(&labels, 3, &mut std::vec::Vec::new(), &mut seen);
        let three = seen.len();
        walk(&labels[..12], 4, &mut std::vec::Vec::new(), &mut seen);
        assert!(three > 100_000 && seen.len() > three);
    }

    /// The encoder's label hashes, folded from the name's last label as
    /// the XDP program folds them, give every suffix's key fingerprint.
    #[test]
    fn the_encoders_label_hashes_give_each_suffixs_fingerprint() {
        let mut long = std::vec![9u8];
        long.extend_from_slice(b"ABCDEFGHI");
        long.push(20);
        long.extend_from_slice(&[b'z'; 20]);
        long.extend_from_slice(b"\x03Svc\x07CLUSTER\x05local\x00");
        for wire in [
            &b"\x03api\x06GitHub\x03COM\x03svc\x07cluster\x05local\x00"[..],
            &long,
            b"\x01a\x00",
        ] {
            let mut s = std::boxed::Box::new(Scratch::zeroed());
            let (len, _) = encode_slice(&mut s, wire).unwrap();
            let key = s.buf[crate::name::KEY_END - len..crate::name::KEY_END].to_vec();
            let m = s.nlabels as usize;
            let mut state = suffix_start();
            let mut at = 0;
            for k in 1..=m {
                state = suffix_push(state, s.label_hash[m - k]);
                at += 1 + key[at] as usize;
                assert_eq!(at, len - s.label_pos[m - k] as usize);
                assert_eq!(
                    Some(suffix_fp(state)),
                    key_fingerprint(&key[..at]),
                    "suffix of {k} labels of {wire:?}"
                );
            }
        }
    }
}

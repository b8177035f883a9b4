//! The longest pattern covering a name, from the pattern table (see
//! `dnsfast_common::table`): the answer a longest-prefix-match trie over the
//! label-reversed keys would give, from a few inlined array reads.

use aya_ebpf::{
    btf_maps::{Array, HashMap},
    macros::btf_map,
};
use dnsfast_common::{
    load8, opaque, park,
    table::{
        buckets_of, suffix_fp, suffix_push, suffix_start, Bucket, Depths, LongKey, MAX_DEPTHS,
        SLOT_KEY_LEN,
    },
    Scratch, DEFAULT_MAX_PATTERNS, KEY_START_MASK, MAX_LABELS,
};

/// Sized by the agent at load time (`table::bucket_count`).
#[btf_map]
static PATTERNS: Array<Bucket, 65_536> = Array::new();

/// Patterns per label count.
#[btf_map]
static PATTERN_DEPTHS: Array<Depths, 1> = Array::new();

/// Keys longer than a slot holds, by fingerprint (`BPF_F_NO_PREALLOC`:
/// memory only for the few there are).
#[btf_map]
static PATTERN_TAILS: HashMap<u64, LongKey, { DEFAULT_MAX_PATTERNS as usize }, 1> = HashMap::new();

/// See `dnsfast_common::table::GLOBAL_BUCKET_MASK`.
#[unsafe(no_mangle)]
static DNSFAST_BUCKET_MASK: u32 = 65_535;

#[inline(always)]
fn bucket_mask() -> u32 {
    // SAFETY: reading a plain static; volatile so the value set at load
    // time is used, not the compile-time one.
    unsafe { core::ptr::read_volatile(&DNSFAST_BUCKET_MASK) }
}

// What a probe found, parked in `Scratch::found`.
const F_ACTION: usize = 0;
const F_LEN: usize = 1;
const F_BUCKET: usize = 2;
const F_SLOT: usize = 3;

/// The rule of the longest pattern that is a suffix of the encoded name at
/// a label boundary, as `action << 16 | key_len`, or 0 for none. It runs
/// inside the encoder's global function (`name::dnsfast_encode`), right
/// after the walk that left the label hashes: a global function of its own
/// would cost a call and a return (about 10 ns here, where every return
/// goes through the kernel's return thunk) on every query.
///
/// Suffix fingerprints are folded from the name's last label on; label
/// counts are then tried from the name's own down, skipping those no
/// pattern has. The first slot with the suffix's fingerprint and length
/// is confirmed byte by byte. A fingerprint that matched without its bytes
/// (a 64-bit collision) ends the search with no rule: the name passes up,
/// and the forwarder decides it from its own copy of the rules. Nothing is
/// answered on a fingerprint alone.
#[inline(always)]
pub fn longest(s: &mut dnsfast_common::Scratch) -> u64 {
    let Some(depths) = PATTERN_DEPTHS.get(0) else {
        return 0;
    };
    let m = opaque(&s.nlabels) & (MAX_LABELS - 1);
    let len = opaque(&s.name_len) & 0xff;
    let count = depths.count as usize;
    // The longest label count a pattern has that the name has too; with
    // none, nothing can match and nothing is hashed.
    let mut first = 0;
    while first < MAX_DEPTHS {
        if first >= count || depths.depth[first & (MAX_DEPTHS - 1)] as usize <= m {
            break;
        }
        first += 1;
    }
    if first >= count {
        return 0;
    }
    let top = depths.depth[first & (MAX_DEPTHS - 1)] as usize & (MAX_LABELS - 1);

    // suffix[k]: the state of the name's last k labels.
    let mut state = suffix_start();
    let mut k = 1;
    while k < MAX_LABELS {
        if k > top {
            break;
        }
        state = suffix_push(state, s.label_hash[(m - k) & (MAX_LABELS - 1)]);
        s.suffix[k] = state;
        k += 1;
    }

    park(&mut s.found[F_ACTION], 0);
    // Where the probes start, parked: the loop above left `first` with a
    // different range on each way out.
    park(&mut s.found[F_BUCKET], first);
    let mask = bucket_mask();
    // Read again: each way out of the loop above left `m` with another
    // known range, and the verifier would walk the loop below once per
    // range.
    let m = opaque(&s.nlabels) & (MAX_LABELS - 1);
    // The label counts patterns have, longest first.
    let mut i = opaque(&s.found[F_BUCKET]) & (MAX_DEPTHS - 1);
    while i < MAX_DEPTHS {
        if i >= count {
            break;
        }
        let d = depths.depth[i & (MAX_DEPTHS - 1)] as usize & (MAX_LABELS - 1);
        // No `continue` here: LLVM would lay the loop out with its back
        // edge as a fall-through, which Linux 6.1's CFG check refuses.
        if d <= m && d != 0 {
            let fp = suffix_fp(s.suffix[d]);
            // The suffix of d labels starts at wire label m - d.
            let plen = len.wrapping_sub(s.label_pos[(m - d) & (MAX_LABELS - 1)] as usize) & 0xff;
            let (b1, b2) = buckets_of(fp, mask);
            if find(s, b1, fp, plen) || find(s, b2, fp, plen) {
                break;
            }
        }
        i += 1;
    }
    let action = opaque(&s.found[F_ACTION]) as u64;
    if action == 0 {
        return 0;
    }
    let key_len = opaque(&s.found[F_LEN]);
    if !verify(s, key_len) || (key_len > SLOT_KEY_LEN && !verify_long(s, key_len)) {
        return 0;
    }
    (action << 16) | key_len as u64
}

/// Parks the first slot of bucket `b` holding fingerprint `fp` with a key
/// of `plen` bytes.
#[inline(always)]
fn find(s: &mut Scratch, b: u32, fp: u64, plen: usize) -> bool {
    let Some(bucket) = PATTERNS.get(b) else {
        return false;
    };
    let mut i = 0;
    while i < 4 {
        let r = bucket.rule[i];
        if bucket.fp[i] == fp && r.action != 0 && r.key_len as usize == plen {
            park(&mut s.found[F_ACTION], r.action as usize);
            park(&mut s.found[F_LEN], plen);
            park(&mut s.found[F_BUCKET], b as usize);
            park(&mut s.found[F_SLOT], i);
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the parked slot's key bytes (up to `SLOT_KEY_LEN`) are the
/// name's.
#[inline(always)]
fn verify(s: &Scratch, plen: usize) -> bool {
    let Some(bucket) = PATTERNS.get(opaque(&s.found[F_BUCKET]) as u32) else {
        return false;
    };
    same_bytes(s, &bucket.key[opaque(&s.found[F_SLOT]) & 3], 0, plen)
}

/// Whether the key bytes past the slot's, kept in `PATTERN_TAILS`, are the
/// name's.
#[inline(always)]
fn verify_long(s: &Scratch, key_len: usize) -> bool {
    let Some(bucket) = PATTERNS.get(opaque(&s.found[F_BUCKET]) as u32) else {
        return false;
    };
    let fp = bucket.fp[opaque(&s.found[F_SLOT]) & 3];
    // SAFETY: a lookup; the value is only read.
    let Some(long) = (unsafe { PATTERN_TAILS.get(fp) }) else {
        return false;
    };
    same_bytes(s, &long.bytes, SLOT_KEY_LEN / 8, key_len)
}

/// Whether `stored`, from its chunk `first` on, holds the name's key bytes
/// there, up to the key's `len` (stored keys are zero padded past it).
#[inline(always)]
fn same_bytes<const N: usize>(s: &Scratch, stored: &[u8; N], first: usize, len: usize) -> bool {
    let key = opaque(&s.key_start) & KEY_START_MASK;
    let mut c = first;
    while c < N / 8 {
        let at = c * 8;
        if at >= len {
            break;
        }
        // SAFETY: at + 8 <= N: inside `stored`.
        let v = unsafe { core::ptr::read_unaligned(stored.as_ptr().add(at) as *const u64) };
        if differ(load8(s, key + at), v, len - at) {
            return false;
        }
        c += 1;
    }
    true
}

/// Whether the first `keep` bytes (all 8 if more) of two chunks differ.
#[inline(always)]
fn differ(a: u64, b: u64, keep: usize) -> bool {
    let m = if keep >= 8 {
        u64::MAX
    } else {
        (1u64 << ((keep & 7) * 8)) - 1
    };
    (a ^ b) & m != 0
}

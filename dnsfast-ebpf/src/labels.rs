//! Membership in auto mode's label sets (see `dnsfast_common::labels`).

use aya_ebpf::{btf_maps::Array, macros::btf_map};
use dnsfast_common::{
    label_after,
    labels::{
        fp_finish, fp_round, fp_start, label_buckets, label_chunk, LabelBucket, NAMESPACE_BUCKETS,
        TLD_BUCKETS,
    },
    load8, opaque, SCRATCH_MASK,
};

/// Labels that make what stands before a search suffix look fully
/// qualified: the TLDs, and the last labels of the cluster domain and the
/// search suffixes.
#[btf_map]
static TLDS: Array<LabelBucket, { TLD_BUCKETS as usize }> = Array::new();

/// The namespaces folded out of the pattern table: a name under an
/// `ACTION_SUFFIX_NS` rule P whose next label is here is judged against
/// `<label>.P`, the namespace's own search suffix.
#[btf_map]
static NAMESPACES: Array<LabelBucket, { NAMESPACE_BUCKETS as usize }> = Array::new();

pub const SET_TLDS: u64 = 0;
pub const SET_NAMESPACES: u64 = 1;

/// Whether the label that comes right after the first `suffix_len` bytes
/// of the encoded name (`label_after`) is in set `set`: its size in the
/// key (length byte and text) if it is, 0 if it is not or there is no such
/// label. A global BPF function: the verifier checks it once on its own,
/// and its callers see an unknown result rather than one state per way out
/// of its loops; so the lengths stay in registers here.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dnsfast_label_in(set: u64, suffix_len: u64) -> u64 {
    let Some(s) = crate::SCRATCH.get(0) else {
        return 0;
    };
    let at = label_after(s, opaque(&s.name_len), suffix_len as usize);
    if at == 0 {
        return 0;
    }
    let at = at & SCRATCH_MASK;
    let n = (s.buf[at] & 63) as usize;
    let mut h = fp_start();
    let mut c = 0;
    while c < 8 {
        if c * 8 > n {
            break;
        }
        h = fp_round(h, label_chunk(load8(s, at + c * 8), n, c));
        c += 1;
    }
    let fp = fp_finish(h);
    let mask = if set == SET_TLDS {
        TLD_BUCKETS - 1
    } else {
        NAMESPACE_BUCKETS - 1
    };
    let (b1, b2) = label_buckets(fp, mask);
    for b in [b1, b2] {
        let bucket = if set == SET_TLDS {
            TLDS.get(b)
        } else {
            NAMESPACES.get(b)
        };
        let Some(bucket) = bucket else {
            continue;
        };
        let mut i = 0;
        while i < 4 {
            if bucket.fp[i] == fp && same(s, at, n, &bucket.label[i].label) {
                return n as u64 + 1;
            }
            i += 1;
        }
    }
    0
}

/// Whether the stored label key is the label of `n` bytes at `at`. Only
/// the chunks holding its `n + 1` bytes are compared: the first holds the
/// length byte, and past its length a stored key is zeros, as the masked
/// chunks are.
#[inline(always)]
fn same(s: &dnsfast_common::Scratch, at: usize, n: usize, stored: &[u8; 64]) -> bool {
    let mut c = 0;
    while c < 8 {
        if c * 8 > n {
            break;
        }
        // SAFETY: c < 8: inside the 64-byte key.
        let v = unsafe { core::ptr::read_unaligned(stored.as_ptr().add(c * 8) as *const u64) };
        if v != label_chunk(load8(s, at + c * 8), n, c) {
            return false;
        }
        c += 1;
    }
    true
}

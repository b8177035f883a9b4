//! The kernel answer cache, shared by both sides: the forwarder copies the
//! answers it caches into the `ANSWERS` map, and the XDP program answers
//! later queries for them in place, with TTLs counted down, before they
//! ever reach a socket.
//!
//! The key is a hash of the label-reversed name (the same encoding the
//! pattern table uses) plus QTYPE and the DO/CD bits; the value carries the
//! name itself, so a hash collision can only miss, never answer wrongly.

use crate::abi::Scratch;
use crate::name::{load8, opaque, park, store8, KEY_END, KEY_START_MASK};

/// Bytes after the question that a cached answer may hold.
pub const ANSWER_BODY_CAP: usize = 512;
/// TTL fields a cached answer may hold.
pub const MAX_TTLS: usize = 16;
/// The UDP payload size the answers advertise in their OPT record.
pub const ANSWER_UDP_PAYLOAD: u16 = 1232;

/// Key of the `LISTEN_ADDRS` map: an address and port the forwarder
/// listens on. The cache answers only queries sent to one of them (an
/// all-zero address stands for "any address" on that port), so it never
/// answers for another DNS server on the same path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u32,
    pub port: u32,
    /// IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// Key of the `ANSWERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    /// [`name_hash`] of the label-reversed, lower-cased name.
    pub hash: u64,
    pub qtype: u16,
    /// Bit 0: the query's DO bit; bit 1: its CD bit.
    pub bits: u16,
    pub _pad: u32,
}

/// Value of the `ANSWERS` map: an answer minus its header and question,
/// which the query already holds at the same offsets (so compression
/// pointers into the question stay valid).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedAnswer {
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) times: when it was stored, and
    /// when it stops being served.
    pub stored_ns: u64,
    pub expires_ns: u64,
    /// The label-reversed name, zero padded: checked on every hit.
    pub name: [u64; 32],
    pub name_len: u32,
    /// Bytes of `body` in use.
    pub body_len: u32,
    /// Header bytes 2 and 3 of the answer, with RD and CD cleared: the
    /// query's own RD and CD bits are put back.
    pub flags: [u8; 2],
    /// ANCOUNT, NSCOUNT, ARCOUNT in network order (without OPT).
    pub counts: [u8; 6],
    pub nttl: u32,
    /// Offsets of the TTL fields from the start of `body`.
    pub ttl_off: [u16; MAX_TTLS],
    /// TTL values as stored; served as `ttl - whole seconds since stored`.
    pub ttl: [u32; MAX_TTLS],
    pub body: [u8; ANSWER_BODY_CAP],
}

impl CachedAnswer {
    pub const fn zeroed() -> Self {
        Self {
            stored_ns: 0,
            expires_ns: 0,
            name: [0; 32],
            name_len: 0,
            body_len: 0,
            flags: [0; 2],
            counts: [0; 6],
            nttl: 0,
            ttl_off: [0; MAX_TTLS],
            ttl: [0; MAX_TTLS],
            body: [0; ANSWER_BODY_CAP],
        }
    }
}

/// Indices of the cache query state that the main program leaves in
/// `Scratch::cq` for the cache program it tail-calls.
pub mod cq {
    /// DNS header plus question, in bytes.
    pub const QLEN: usize = 0;
    pub const NAME_LEN: usize = 1;
    /// 0 without OPT, else `0x100 | DO bit (0x80 or 0)`.
    pub const OPT: usize = 2;
    /// The query's EDNS UDP payload size.
    pub const PAYLOAD: usize = 3;
    pub const QTYPE: usize = 4;
    /// Why the query would be passed on a miss: a `Counters` outcome.
    pub const REASON: usize = 5;
    /// Bytes of the cached body being copied (see the cache program).
    pub const BODY_LEN: usize = 6;
    /// The deciding rule for `dnsfast watch`: key length | action << 16.
    pub const RULE: usize = 7;
    pub const REASON_NO_MATCH: u32 = 0;
    pub const REASON_ALLOWED: u32 = 1;
}

#[inline(always)]
const fn mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// Zeroes the 8 bytes after the encoded name, so that its last chunk reads
/// as the name's tail and zeros on both sides.
#[inline(always)]
pub fn pad_name(s: &mut Scratch) {
    store8(s, KEY_END, 0);
}

/// Hash of the encoded name of `len` bytes ending at `KEY_END` (after
/// [`pad_name`]): 8-byte chunks, the last one zero padded.
///
/// The length is parked in `s` and read back at each step rather than
/// compared in a register: each early exit would otherwise leave a
/// different known range on it, and the verifier would walk everything
/// after the loop once per exit (and the next loop's exits once per each).
#[inline(always)]
pub fn name_hash(s: &mut Scratch, len: usize) -> u64 {
    park(&mut s.cq[cq::NAME_LEN], len);
    let mut h = 0x243f_6a88_85a3_08d3u64 ^ len as u64;
    let mut i = 0;
    while i < 32 {
        if i * 8 >= opaque(&s.cq[cq::NAME_LEN]) {
            break;
        }
        h = mix(h, chunk(s, i));
        i += 1;
    }
    mix(h, opaque(&s.cq[cq::NAME_LEN]) as u64)
}

/// Chunk `i` of the encoded name (its length parked in `s.cq`), bytes past
/// its end read as zero.
#[inline(always)]
pub fn chunk(s: &Scratch, i: usize) -> u64 {
    // The name starts at the key start the encoder parked. Read back opaque, so LLVM cannot fold the
    // index into a range it proves and drop the mask the verifier needs.
    let at = (opaque(&s.key_start) & KEY_START_MASK) + i * 8;
    let v = load8(s, at);
    let left = opaque(&s.cq[cq::NAME_LEN]).saturating_sub(i * 8);
    if left >= 8 {
        v
    } else {
        // Little-endian: the name's bytes are the low ones.
        v & ((1u64 << ((left & 7) * 8)) - 1)
    }
}

/// Whether `a` holds the name encoded in `s`.
#[inline(always)]
pub fn name_matches(s: &mut Scratch, len: usize, a: &CachedAnswer) -> bool {
    if a.name_len as usize != len {
        return false;
    }
    park(&mut s.cq[cq::NAME_LEN], len);
    let mut i = 0;
    while i < 32 {
        if i * 8 >= opaque(&s.cq[cq::NAME_LEN]) {
            break;
        }
        if chunk(s, i) != a.name[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Stores the encoded name of `s` into `a`, zero padded.
pub fn store_name(s: &mut Scratch, len: usize, a: &mut CachedAnswer) {
    park(&mut s.cq[cq::NAME_LEN], len);
    a.name = [0; 32];
    a.name_len = len as u32;
    let mut i = 0;
    while i < 32 && i * 8 < len {
        a.name[i] = chunk(s, i);
        i += 1;
    }
}

/// The label-reversed name `a` holds, in `out`; its length. (User space
/// reads it back to decide which entries a flush or a reload drops.)
pub fn stored_name(a: &CachedAnswer, out: &mut [u8; 256]) -> usize {
    let len = (a.name_len as usize).min(out.len());
    for (i, w) in a.name.iter().enumerate() {
        let at = i * 8;
        if at >= len {
            break;
        }
        let bytes = w.to_ne_bytes();
        let n = (len - at).min(8);
        out[at..at + n].copy_from_slice(&bytes[..n]);
    }
    len
}

/// Whether `a` is negative: NXDOMAIN, or no answer records (NODATA).
pub fn is_negative(a: &CachedAnswer) -> bool {
    a.flags[1] & 0x0f == 3 || a.counts[0..2] == [0, 0]
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::name::encode_slice;
    use std::boxed::Box;

    fn enc(wire: &[u8]) -> (Box<Scratch>, usize) {
        let mut s = Box::new(Scratch::zeroed());
        // Garbage after the name must not matter.
        s.buf[KEY_END..KEY_END + 16].fill(0xee);
        let (len, _) = encode_slice(&mut s, wire).unwrap();
        (s, len)
    }

    #[test]
    fn hash_ignores_case_and_trailing_bytes() {
        let (a, la) = enc(b"\x03WWW\x07example\x03com\x00");
        let (b, lb) = enc(b"\x03www\x07EXAMPLE\x03com\x00");
        let (mut a, mut b) = (a, b);
        assert_eq!(name_hash(&mut a, la), name_hash(&mut b, lb));
        let (mut c, lc) = enc(b"\x03wwx\x07example\x03com\x00");
        assert_ne!(name_hash(&mut a, la), name_hash(&mut c, lc));
        let mut stored = CachedAnswer::zeroed();
        store_name(&mut a, la, &mut stored);
        assert!(name_matches(&mut b, lb, &stored));
        assert!(!name_matches(&mut c, lc, &stored));
        let (mut d, ld) = enc(b"\x03www\x07example\x02co\x00");
        assert!(!name_matches(&mut d, ld, &stored));
    }

    #[test]
    fn the_stored_name_reads_back_as_the_key() {
        for n in [1usize, 7, 8, 9, 63] {
            let mut wire = std::vec![n as u8];
            wire.extend(std::iter::repeat_n(b'A', n));
            wire.extend_from_slice(b"\x03com\x00");
            let (mut s, len) = enc(&wire);
            let mut stored = CachedAnswer::zeroed();
            store_name(&mut s, len, &mut stored);
            let mut out = [0u8; 256];
            let got = stored_name(&stored, &mut out);
            assert_eq!(&out[..got], &s.buf[KEY_END - len..KEY_END], "{n}");
        }
    }

    #[test]
    fn lengths_on_chunk_boundaries() {
        for n in 1..=63usize {
            let mut wire = std::vec![n as u8];
            wire.extend(std::iter::repeat_n(b'a', n));
            wire.push(0);
            let (mut s, len) = enc(&wire);
            assert_eq!(len, n + 1);
            let mut stored = CachedAnswer::zeroed();
            store_name(&mut s, len, &mut stored);
            assert!(name_matches(&mut s, len, &stored));
            assert_eq!(stored.name[len / 8] >> ((len % 8) * 8), 0, "{n}");
        }
    }
}

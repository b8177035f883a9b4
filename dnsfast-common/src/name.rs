//! The one implementation of the match encoding, used by the XDP program on
//! packets and by the agent on patterns and in tests.
//!
//! A pattern matches a name when it is a suffix of the name at a label
//! boundary, ASCII case-insensitively (dnsmasq's `--address=/suffix/`). With
//! the labels of a wire name written in reverse order and lower-cased,
//! `www.Example.com` becomes `\x03com\x07example\x03www`, and "suffix at a
//! label boundary" becomes "byte prefix": the length bytes stop `com` from
//! matching `xcom`. The pattern table (`crate::table`) then finds the
//! longest pattern that is a prefix of the key at a label boundary.
//!
//! The key is anchored at its *end* ([`KEY_END`]): the label whose length
//! byte sits at wire offset `i`, with length `n`, goes to `KEY_END - (i + n +
//! 1)`, whatever the name's total length. So one forward walk over the
//! labels places each label as soon as it is found, with no second pass and
//! no copy of the name. Each label is moved in 8-byte chunks, lower-cased 8
//! bytes at a time, aligned to the label's *end*: the lowest chunk reaches
//! up to 7 bytes before the label, into the place of the next label the walk
//! writes (or below the key), so nothing written is ever overwritten with
//! junk, and no read goes past the label's last byte. The key starts `len`
//! bytes before `KEY_END` ([`key_start`]).

use crate::abi::{Scratch, KEY_DATA_LEN, MAX_LABEL, MAX_NAME_WIRE};
use crate::table::{label_end_chunk, label_hash_start, label_round};

/// Size of the scratch buffer (plus [`SLACK`] so that an 8-byte access at
/// any masked index stays inside). A power of two so indices can be masked.
pub const SCRATCH_LEN: usize = 2048;
pub const SCRATCH_MASK: usize = SCRATCH_LEN - 1;
pub const SLACK: usize = 8;
/// Where the reversed name ends inside the scratch buffer. The key window
/// `[KEY_END - len, KEY_END - len + KEY_DATA_LEN)` stays inside the buffer
/// for every `len` in `0..=254`.
pub const KEY_END: usize = 512;
/// A name of 255 bytes has at most 127 labels.
pub const MAX_LABELS: usize = 128;

/// Why a wire name was not encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The name runs past the end of the data.
    Truncated,
    /// A label length of 64 or more: a compression pointer or reserved type.
    BadLabel,
    /// More than 255 bytes in wire form.
    TooLong,
}

/// ASCII lower-case of one byte.
#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b | 0x20
    } else {
        b
    }
}

/// ASCII lower-case of 8 bytes at once. Label length bytes (at most 63) are
/// below `b'A'`, and bytes with the high bit set are left alone, so a whole
/// chunk of wire name can go through without knowing which bytes are what.
#[inline(always)]
pub const fn lower8(x: u64) -> u64 {
    const HI: u64 = 0x8080_8080_8080_8080;
    let low7 = x & !HI;
    // Bit 7 of each byte: set when the byte's low 7 bits are >= 'A', and
    // when they are > 'Z'. No carry crosses a byte: 0x7f + 0x3f < 0x100.
    let ge_a = low7 + 0x3f3f_3f3f_3f3f_3f3f;
    let gt_z = low7 + 0x2525_2525_2525_2525;
    let upper = ge_a & !gt_z & !x & HI;
    x | (upper >> 2)
}

#[inline(always)]
fn get(s: &Scratch, i: usize) -> u8 {
    s.buf[i & SCRATCH_MASK]
}

#[inline(always)]
pub fn load8(s: &Scratch, i: usize) -> u64 {
    let i = i & SCRATCH_MASK;
    // SAFETY: i + 8 <= SCRATCH_LEN + SLACK, the buffer's size.
    unsafe { core::ptr::read_unaligned(s.buf.as_ptr().add(i) as *const u64) }
}

/// Writes 8 bytes at `i` (masked), unaligned.
#[inline(always)]
pub fn store8(s: &mut Scratch, i: usize, v: u64) {
    let i = i & SCRATCH_MASK;
    // SAFETY: as in `load8`.
    unsafe { core::ptr::write_unaligned(s.buf.as_mut_ptr().add(i) as *mut u64, v) }
}

/// Reads a `u32` through a volatile load. In the XDP program these values
/// live in map memory: a register would carry a different known range out
/// of each loop exit, and the verifier would re-walk what follows once per
/// exit; a value loaded from memory is opaque, and the paths merge.
#[inline(always)]
pub fn opaque(v: &u32) -> usize {
    // SAFETY: a plain read of a valid reference.
    unsafe { core::ptr::read_volatile(v) as usize }
}

#[inline(always)]
pub fn park(v: &mut u32, x: usize) {
    // SAFETY: a plain write through a valid reference.
    unsafe { core::ptr::write_volatile(v, x as u32) }
}

/// Where [`encode`] reads a wire name from: a packet in the kernel, memory
/// in user space. Offsets count from the name's first byte.
pub trait Wire {
    /// The byte at `at`: `None` past the end of the message.
    fn byte(&self, at: usize) -> Option<u8>;
    /// The 8 bytes before offset `end`, in memory order: `None` if any of
    /// them lies past the end of the message. `end` is at least 1, so up to
    /// 7 of the bytes come from before the name (its message's header);
    /// their values do not matter.
    fn chunk_before(&self, end: usize) -> Option<u64>;
}

/// Encodes a wire name. On success the label-reversed, lower-cased name
/// ends at [`KEY_END`], its key start is parked in `s.key_start`, and the value is `(len, start)`:
/// the name's length without the root byte and where the lookup key starts.
///
/// Written for the verifier as much as for people: bounded loops, masked
/// indices, no slicing. In the XDP program it runs inside a BPF global
/// function, so its loops' many ways out cost the caller nothing.
#[inline(always)]
pub fn encode<W: Wire>(w: &W, s: &mut Scratch) -> Result<(usize, usize), NameError> {
    // Opaque to LLVM: it knows `pos` stays small and would drop the index
    // masks below as redundant; the verifier, which does not follow that
    // reasoning, needs them.
    let key_end = core::hint::black_box(KEY_END);
    let mut pos = 0usize;
    let mut guard = 0;
    // At most 127 labels and the root byte.
    let len = loop {
        if guard >= MAX_LABELS {
            return Err(NameError::TooLong);
        }
        guard += 1;
        let n = w.byte(pos).ok_or(NameError::Truncated)? as usize;
        if n == 0 {
            break pos & 0xff;
        }
        if n > MAX_LABEL {
            return Err(NameError::BadLabel);
        }
        let end = pos + n + 1;
        // The root byte must sit at offset 254 at the latest.
        if end > MAX_NAME_WIRE - 1 {
            return Err(NameError::TooLong);
        }
        // n + 1 <= 64 bytes: at most 8 chunks, the first ending where the
        // label ends, each placed 8 bytes lower in the key. Each is also
        // hashed for the pattern table (`crate::table`).
        let mut h = label_hash_start();
        let mut c = 0;
        while c < 8 {
            if c * 8 > n {
                break;
            }
            let v = lower8(w.chunk_before(end - c * 8).ok_or(NameError::Truncated)?);
            store8(s, key_end.wrapping_sub(pos + (c + 1) * 8), v);
            h = label_round(h, label_end_chunk(v, n, c));
            c += 1;
        }
        // guard - 1 < MAX_LABELS: the label's index.
        s.label_hash[(guard - 1) & (MAX_LABELS - 1)] = h;
        s.label_pos[(guard - 1) & (MAX_LABELS - 1)] = pos as u8;
        pos = end;
    };
    // The loop ran once more than there are labels: for the root byte.
    park(&mut s.nlabels, guard - 1);
    let start = key_start(len);
    park(&mut s.key_start, start);
    Ok((len, start))
}

/// Key of the `TLDS` set: a label's length byte, its bytes lower-cased,
/// zero padded. The same bytes the label has in the encoded name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TldKey {
    pub label: [u8; 64],
}

impl TldKey {
    /// `None` for an empty label or one over 63 bytes.
    pub fn new(label: &[u8]) -> Option<Self> {
        if label.is_empty() || label.len() > MAX_LABEL {
            return None;
        }
        let mut k = TldKey { label: [0; 64] };
        k.label[0] = label.len() as u8;
        for (d, s) in k.label[1..].iter_mut().zip(label) {
            *d = lower(*s);
        }
        Some(k)
    }
}

/// Where, in the scratch buffer, the label that comes right after the first
/// `suffix_len` bytes of the encoded name (of `len` bytes) starts: its
/// length byte. That is the last label of what stands before the suffix in
/// the name. 0 (never a label's place) when what stands before the suffix
/// is less than two labels: a single label (`app` in
/// `app.default.svc.cluster.local`) is a service's own name, never a fully
/// qualified one, whatever TLD it may spell.
#[inline(always)]
pub fn label_after(s: &Scratch, len: usize, suffix_len: usize) -> usize {
    let (len, at) = (len & 0xff, suffix_len & 0xff);
    if at >= len {
        return 0;
    }
    let src = (opaque(&s.key_start) & KEY_START_MASK) + at;
    let n = get(s, src) as usize & MAX_LABEL;
    if at + 1 + n >= len {
        return 0;
    }
    src
}

/// Every key start is below this power of two, so masking a start with
/// `KEY_START_MASK` is a no-op that gives the verifier a bound.
pub const KEY_START_MASK: usize = 0x3ff;
const _: () = assert!(KEY_END <= KEY_START_MASK && KEY_START_MASK + KEY_DATA_LEN <= SCRATCH_LEN);

/// Scratch offset where the key of a name of `len` bytes starts.
#[inline(always)]
pub const fn key_start(len: usize) -> usize {
    KEY_END.wrapping_sub(len) & KEY_START_MASK
}

/// A wire name in memory: the user-space [`Wire`].
pub struct SliceWire<'a>(pub &'a [u8]);

impl Wire for SliceWire<'_> {
    fn byte(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }

    fn chunk_before(&self, end: usize) -> Option<u64> {
        if end > self.0.len() {
            return None;
        }
        // Bytes before the name read as zero.
        let mut b = [0u8; 8];
        for (i, v) in b.iter_mut().enumerate() {
            if let Some(at) = (end + i).checked_sub(8) {
                *v = self.0[at];
            }
        }
        Some(u64::from_ne_bytes(b))
    }
}

/// Encodes a wire name held in memory (user space, tests).
pub fn encode_slice(s: &mut Scratch, wire: &[u8]) -> Result<(usize, usize), NameError> {
    encode(&SliceWire(wire), s)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{boxed::Box, vec::Vec};

    fn enc(wire: &[u8]) -> Result<Vec<u8>, NameError> {
        let mut s = Box::new(Scratch::zeroed());
        let (len, start) = encode_slice(&mut s, wire)?;
        assert_eq!(start + len, KEY_END);
        Ok(s.buf[KEY_END - len..KEY_END].to_vec())
    }

    #[test]
    fn reverses_labels_and_lowercases() {
        assert_eq!(
            enc(b"\x03WwW\x07Example\x03COM\x00").unwrap(),
            b"\x03com\x07example\x03www"
        );
        assert_eq!(enc(b"\x03com\x00").unwrap(), b"\x03com");
        assert_eq!(enc(b"\x00").unwrap(), b"");
        // Labels longer than a chunk, and chunks that spill into the next label.
        let long = b"\x0aABCDEFGHIJ\x01x\x11QRSTUVWXYZ@[`{abc\x00";
        assert_eq!(
            enc(long).unwrap(),
            b"\x11qrstuvwxyz@[`{abc\x01x\x0aabcdefghij"
        );
    }

    #[test]
    fn label_after_is_the_label_before_the_suffix() {
        let mut s = Box::new(Scratch::zeroed());
        let wire = b"\x03api\x06GitHub\x03COM\x03svc\x07cluster\x05local\x00";
        let (len, _) = encode_slice(&mut s, wire).unwrap();
        let key_of = |s: &Scratch, at: usize| {
            let n = s.buf[at] as usize;
            TldKey::new(&s.buf[at + 1..at + 1 + n]).unwrap()
        };
        // "svc.cluster.local" is 18 bytes of the encoded name.
        let at = label_after(&s, len, 18);
        assert_eq!(key_of(&s, at), TldKey::new(b"com").unwrap());
        let at = label_after(&s, len, 22);
        assert_eq!(key_of(&s, at), TldKey::new(b"github").unwrap());
        assert_eq!(label_after(&s, len, len), 0, "nothing before the suffix");
        assert_eq!(label_after(&s, len, 29), 0, "one label before the suffix");
        // The longest label.
        let mut wire = std::vec![1u8, b'a', 63u8];
        wire.extend(std::iter::repeat_n(b'X', 63));
        wire.extend_from_slice(b"\x03svc\x00");
        let (len, _) = encode_slice(&mut s, &wire).unwrap();
        let at = label_after(&s, len, 4);
        assert_eq!(key_of(&s, at), TldKey::new(&[b'x'; 63]).unwrap());
        assert!(TldKey::new(b"").is_none() && TldKey::new(&[b'a'; 64]).is_none());
    }

    #[test]
    fn slice_wire_reads_like_a_packet() {
        let w = SliceWire(b"\x03abc\x00");
        assert_eq!(w.byte(0), Some(3));
        assert_eq!(w.byte(5), None, "past the message");
        // The 8 bytes before offset 4: four before the name read as zero.
        assert_eq!(
            w.chunk_before(4),
            Some(u64::from_ne_bytes([0, 0, 0, 0, 3, b'a', b'b', b'c']))
        );
        assert_eq!(w.chunk_before(5).map(|v| v.to_ne_bytes()[7]), Some(0));
        assert_eq!(w.chunk_before(6), None, "runs past the message");
    }

    #[test]
    fn lower8_matches_lower_on_every_byte() {
        for b in 0..=255u8 {
            let x = u64::from_le_bytes([b, b'A', 0xc1, b, b'Z', b'[', b'@', b]);
            let want: Vec<u8> = x.to_le_bytes().iter().map(|&c| lower(c)).collect();
            assert_eq!(lower8(x).to_le_bytes().to_vec(), want, "byte {b:#x}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(enc(b"\x03co"), Err(NameError::Truncated));
        assert_eq!(enc(b"\x03com"), Err(NameError::Truncated));
        assert_eq!(enc(b""), Err(NameError::Truncated));
        assert_eq!(enc(b"\xc0\x0c"), Err(NameError::BadLabel));
        assert_eq!(enc(b"\x40aaaa"), Err(NameError::BadLabel));
        // 4 labels of 63 = 256 bytes + root: too long.
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(63);
            long.extend(std::iter::repeat_n(b'a', 63));
        }
        long.push(0);
        assert_eq!(enc(&long), Err(NameError::TooLong));
        // 128 one-byte labels: too long before the label table overflows.
        let many: Vec<u8> = (0..128).flat_map(|_| [1u8, b'a']).chain([0]).collect();
        assert_eq!(enc(&many), Err(NameError::TooLong));
    }

    #[test]
    fn longest_legal_name_fits() {
        // 3 x 63 + 61 labels: 64*3 + 62 = 254 bytes + root = 255.
        let mut wire = Vec::new();
        for n in [63usize, 63, 63, 61] {
            wire.push(n as u8);
            wire.extend(std::iter::repeat_n(b'X', n));
        }
        wire.push(0);
        assert_eq!(wire.len(), 255);
        let key = enc(&wire).unwrap();
        assert_eq!(key.len(), 254);
        assert_eq!(key[0], 61);
        assert!(key.iter().all(|&b| b != b'X'));
        // 127 one-byte labels: 254 bytes + root.
        let many: Vec<u8> = (0..127).flat_map(|_| [1u8, b'a']).chain([0]).collect();
        assert_eq!(enc(&many).unwrap().len(), 254);
    }
}

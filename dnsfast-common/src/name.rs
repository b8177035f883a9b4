//! The one implementation of the match encoding, used by the XDP program on
//! packets and by the agent on patterns and in tests.
//!
//! A pattern matches a name when it is a suffix of the name at a label
//! boundary, ASCII case-insensitively (dnsmasq's `--address=/suffix/`). With
//! the labels of a wire name written in reverse order and lower-cased,
//! `www.Example.com` becomes `\x03com\x07example\x03www`, and "suffix at a
//! label boundary" becomes "byte prefix": the length bytes stop `com` from
//! matching `xcom`. A longest-prefix-match trie keyed on these bytes with
//! `prefix_len = 8 * len` then finds the longest matching pattern in one
//! lookup.
//!
//! The encoder makes a single pass over the wire name. A label whose length
//! byte sits at wire offset `i` with length `n` occupies reversed positions
//! that end `i + n + 1` bytes before the end of the key, so each byte can be
//! placed before the name's total length is known, provided the key is
//! anchored at its *end* ([`KEY_END`]). The lookup key then starts
//! `len + 4` bytes before `KEY_END`, where the `u32` prefix length is written.

use crate::abi::{KEY_DATA_LEN, MAX_LABEL, MAX_NAME_WIRE};

/// Size of the scratch buffer. A power of two so indices can be masked.
pub const SCRATCH_LEN: usize = 1024;
pub const SCRATCH_MASK: usize = SCRATCH_LEN - 1;
/// Where the reversed name ends inside the scratch buffer. The key window
/// `[KEY_END - len - 4, KEY_END - len - 4 + 4 + KEY_DATA_LEN)` stays inside
/// the buffer for every `len` in `0..=254`.
pub const KEY_END: usize = 512;
/// Size of an LPM key: `u32` prefix length plus the data.
pub const KEY_SIZE: usize = 4 + KEY_DATA_LEN;

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

/// ASCII lower-case. Label length bytes are at most 63, below `b'A'`, so the
/// whole wire name can go through this without tracking which bytes are
/// lengths.
#[inline(always)]
pub const fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() {
        b | 0x20
    } else {
        b
    }
}

/// Scratch index of wire byte `j` of the label whose length byte is at `i`
/// and whose length is `n`: `KEY_END - (i + n + 1) + (j - i)`.
/// Masked, so any input stays inside the buffer; wrapped values only occur
/// for names that are then rejected as too long.
#[inline(always)]
pub const fn reversed_index(label_base: usize, j: usize) -> usize {
    label_base.wrapping_add(j) & SCRATCH_MASK
}

/// `label_base` for a label whose length byte is at `i` with length `n`.
#[inline(always)]
pub const fn label_base(i: usize, n: usize) -> usize {
    KEY_END
        .wrapping_sub(n)
        .wrapping_sub(1)
        .wrapping_sub(i)
        .wrapping_sub(i)
}

/// The encoder's loop state. In the XDP program it lives in map memory:
/// kept in registers, every label boundary would fork the verifier's state
/// with a different known range, and a 255-step loop would never finish
/// verifying. Loaded from memory, the values are opaque, the forks merge, and
/// verification is linear in the loop length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Cursor {
    pub next_len_at: u32,
    pub base: u32,
}

#[inline(always)]
fn load(v: &u32) -> usize {
    // SAFETY: a plain read of a valid reference.
    unsafe { core::ptr::read_volatile(v) as usize }
}

#[inline(always)]
fn store(v: &mut u32, x: usize) {
    // SAFETY: a plain write through a valid reference.
    unsafe { core::ptr::write_volatile(v, x as u32) }
}

/// Writes the label-reversed, lower-cased form of the wire name read through
/// `byte_at` so that it ends at [`KEY_END`] in `buf`, and returns the name's
/// length without the root byte (the key length in bytes).
///
/// `byte_at(j)` returns the `j`-th byte of the wire name, or `None` past the
/// end of the data. This is written for the verifier as much as for people:
/// one bounded loop, state in `cur`, masked indices, no slicing.
#[inline(always)]
pub fn encode_reversed(
    buf: &mut [u8; SCRATCH_LEN],
    cur: &mut Cursor,
    mut byte_at: impl FnMut(usize) -> Option<u8>,
) -> Result<usize, NameError> {
    store(&mut cur.next_len_at, 0);
    store(&mut cur.base, 0);
    let mut j = 0usize;
    while j < MAX_NAME_WIRE {
        let b = match byte_at(j) {
            Some(b) => b,
            None => return Err(NameError::Truncated),
        };
        if j == load(&cur.next_len_at) {
            if b == 0 {
                return Ok(j);
            }
            if b as usize > MAX_LABEL {
                return Err(NameError::BadLabel);
            }
            store(&mut cur.next_len_at, j + b as usize + 1);
            store(&mut cur.base, label_base(j, b as usize));
        }
        buf[reversed_index(load(&cur.base), j)] = lower(b);
        j += 1;
    }
    Err(NameError::TooLong)
}

/// Every key start is below this power of two, so masking a start with
/// `KEY_START_MASK` is a no-op that gives the verifier a bound.
pub const KEY_START_MASK: usize = 0x1ff;
const _: () = assert!(KEY_END - 4 <= KEY_START_MASK && KEY_START_MASK + KEY_SIZE <= SCRATCH_LEN);

/// Scratch offset where the LPM key for a name of `len` bytes starts.
#[inline(always)]
pub const fn key_start(len: usize) -> usize {
    (KEY_END - 4).wrapping_sub(len) & KEY_START_MASK
}

/// Writes the key's `u32` prefix length (in bits, host order as the kernel's
/// `struct bpf_lpm_trie_key` wants) at `start = key_start(len)`, just before
/// the data. The caller passes `start` so the XDP program can launder it
/// through map memory for the verifier.
#[inline(always)]
pub fn finish_key(buf: &mut [u8; SCRATCH_LEN], start: usize, len: usize) {
    let start = start & KEY_START_MASK;
    let bits = ((len as u32) * 8).to_ne_bytes();
    buf[start & SCRATCH_MASK] = bits[0];
    buf[(start + 1) & SCRATCH_MASK] = bits[1];
    buf[(start + 2) & SCRATCH_MASK] = bits[2];
    buf[(start + 3) & SCRATCH_MASK] = bits[3];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(wire: &[u8]) -> Result<std::vec::Vec<u8>, NameError> {
        let mut buf = [0u8; SCRATCH_LEN];
        let len = encode_reversed(&mut buf, &mut Cursor::default(), |j| wire.get(j).copied())?;
        Ok(buf[KEY_END - len..KEY_END].to_vec())
    }

    extern crate std;

    #[test]
    fn reverses_labels_and_lowercases() {
        assert_eq!(
            enc(b"\x03WwW\x07Example\x03COM\x00").unwrap(),
            b"\x03com\x07example\x03www"
        );
        assert_eq!(enc(b"\x03com\x00").unwrap(), b"\x03com");
        assert_eq!(enc(b"\x00").unwrap(), b"");
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(enc(b"\x03co"), Err(NameError::Truncated));
        assert_eq!(enc(b"\x03com"), Err(NameError::Truncated));
        assert_eq!(enc(b"\xc0\x0c"), Err(NameError::BadLabel));
        assert_eq!(enc(b"\x40aaaa"), Err(NameError::BadLabel));
        // 4 labels of 63 = 256 bytes + root: too long.
        let mut long = std::vec::Vec::new();
        for _ in 0..4 {
            long.push(63);
            long.extend(std::iter::repeat_n(b'a', 63));
        }
        long.push(0);
        assert_eq!(enc(&long), Err(NameError::TooLong));
    }

    #[test]
    fn longest_legal_name_fits() {
        // 3 x 63 + 61 labels: 64*3 + 62 = 254 bytes + root = 255.
        let mut wire = std::vec::Vec::new();
        for n in [63usize, 63, 63, 61] {
            wire.push(n as u8);
            wire.extend(std::iter::repeat_n(b'x', n));
        }
        wire.push(0);
        assert_eq!(wire.len(), 255);
        assert_eq!(enc(&wire).unwrap().len(), 254);
    }

    #[test]
    fn key_prefix_len_precedes_data() {
        let mut buf = [0u8; SCRATCH_LEN];
        let wire = b"\x01a\x02bc\x00";
        let len =
            encode_reversed(&mut buf, &mut Cursor::default(), |j| wire.get(j).copied()).unwrap();
        let start = key_start(len);
        finish_key(&mut buf, start, len);
        assert_eq!(start + 4 + len, KEY_END);
        assert_eq!(
            u32::from_ne_bytes(buf[start..start + 4].try_into().unwrap()),
            40
        );
        assert_eq!(&buf[start + 4..KEY_END], b"\x02bc\x01a");
        assert!(start + KEY_SIZE <= SCRATCH_LEN);
    }
}

//! The question name, encoded straight from the packet into the lookup key
//! (see `dnsfast_common::name`).

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use dnsfast_common::{answer::cq, encode, park, Wire};

use crate::packet::Packet;

/// The question name in the packet, from `off`, of which `avail` bytes are
/// the DNS message's.
struct PacketWire {
    pkt: Packet,
    off: usize,
    avail: usize,
}

impl Wire for PacketWire {
    /// Checks that two bytes are in the frame, not one: a one-byte check
    /// needs an opaque constant to keep a form the verifier follows (see
    /// `Packet::byte`), which costs a stack round trip per label. A name is
    /// always followed by QTYPE and QCLASS, so a name whose root byte ends
    /// the frame is malformed either way.
    #[inline(always)]
    fn byte(&self, at: usize) -> Option<u8> {
        if at >= self.avail {
            return None;
        }
        let p = self.pkt.ptr::<[u8; 2]>(self.off + at)?;
        // SAFETY: bounds checked by `ptr`.
        Some(unsafe { (*p)[0] })
    }

    #[inline(always)]
    fn chunk_before(&self, end: usize) -> Option<u64> {
        let p = self.pkt.ptr::<u64>((self.off + end).wrapping_sub(8))?;
        // SAFETY: bounds checked by `ptr`; unaligned reads are fine on the
        // targets dnsfast builds for (see build.rs).
        Some(unsafe { core::ptr::read_unaligned(p) })
    }
}

/// Encodes the question name at packet offset `off` (with `avail` bytes of
/// message left) into the scratch map's key, parks its length in
/// `Scratch::name_len`, then looks up its longest pattern (`table::longest`)
/// and parks that rule in `cq[cq::RULE]`: 1 on success, 0 for a name it
/// refuses (nothing looked up). A global BPF
/// function: the verifier checks it once on its own, and its caller sees
/// one unknown result rather than one state per way out of its loops, so
/// the walk keeps its position in registers. The length goes through map
/// memory because LLVM sees through a return value (and would drop the
/// caller's masks on it), while older verifiers (Linux 6.1) forget the
/// bounds of an unknown value spilled before its check.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dnsfast_encode(ctx: *mut xdp_md, off: u64, avail: u64) -> u64 {
    let Some(s) = crate::SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; nothing else touches it while we run.
    let s = unsafe { &mut *s };
    let wire = PacketWire {
        pkt: Packet::new(&XdpContext::new(ctx)),
        off: off as usize,
        avail: avail as usize,
    };
    match encode(&wire, s) {
        Ok((len, _)) => {
            park(&mut s.name_len, len);
            let rule = crate::table::longest(s);
            park(&mut s.cq[cq::RULE], rule as usize);
            1
        }
        Err(_) => 0,
    }
}

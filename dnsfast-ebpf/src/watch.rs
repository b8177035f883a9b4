//! The watch program: one event per decided query into the `EVENTS` ring
//! buffer, for `dnsfast watch`.
//!
//! The main and cache programs tail-call it through `JUMPS[JUMP_WATCH]`
//! after counting their verdict. The agent puts it in that slot only while
//! someone watches; otherwise the tail call finds the slot empty and falls
//! through, so nobody watching costs one failed tail call. Verified on its
//! own, it adds nothing to the main program's verifier budget. It returns
//! the action its caller decided, parked in the scratch map.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use dnsfast_common::{
    answer::cq, opaque, Scratch, WatchState, FAMILY_V4, FAMILY_V6, VERDICT_CACHE, VERDICT_NXDOMAIN,
    WATCH_EVENTS_PER_SEC,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    packet::{Packet, DNS_HDR_LEN, OFF_MASK},
    EVENTS, WATCH_STATE,
};

const SECOND_NS: u64 = 1_000_000_000;

/// Emits the event if the rate allows, and returns the caller's action.
/// `last` is `Counters::last`: verdict | action << 8.
#[inline(always)]
pub fn emit(ctx: &XdpContext, s: &Scratch, last: u64) -> u32 {
    let action = if (last >> 8) as u32 == xdp_action::XDP_TX {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    };
    let verdict = (last & 0xff) as u32;
    let Some(st) = WATCH_STATE.get_ptr_mut(0) else {
        return action;
    };
    // SAFETY: this CPU's slot; XDP runs with preemption off.
    let st: &mut WatchState = unsafe { &mut *st };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(st.window_start_ns) >= SECOND_NS {
        st.window_start_ns = now;
        st.in_window = 0;
    }
    if st.in_window >= u64::from(WATCH_EVENTS_PER_SEC) {
        st.dropped += 1;
        return action;
    }
    st.in_window += 1;
    let Some(mut entry) = EVENTS.reserve(0) else {
        st.dropped += 1;
        return action;
    };
    let e = entry.as_mut_ptr();
    let v6 = opaque(&s.hdr[3]) != 0;
    // An answer has had its addresses swapped: the client is now the
    // destination.
    let answered = verdict == VERDICT_NXDOMAIN || verdict == VERDICT_CACHE;
    let pkt = Packet::new(ctx);
    let l3 = opaque(&s.hdr[0]) & OFF_MASK;
    let mut addr = [0u8; 16];
    if v6 {
        if let Some(ip) = pkt.ptr::<Ipv6Hdr>(l3) {
            // SAFETY: bounds checked by `ptr`.
            addr = unsafe {
                if answered {
                    (*ip).dst_addr
                } else {
                    (*ip).src_addr
                }
            };
        }
    } else if let Some(ip) = pkt.ptr::<Ipv4Hdr>(l3) {
        // SAFETY: bounds checked by `ptr`.
        let a = unsafe {
            if answered {
                (*ip).dst_addr
            } else {
                (*ip).src_addr
            }
        };
        addr[0] = a[0];
        addr[1] = a[1];
        addr[2] = a[2];
        addr[3] = a[3];
    }
    let rule = opaque(&s.cq[cq::RULE]) as u32;
    // The question is where the query had it, answered or not.
    let name_at = (opaque(&s.hdr[1]) & OFF_MASK) + 8 + DNS_HDR_LEN;
    // SAFETY: `e` points at a reserved, writable WatchEvent; every field
    // is written before submit.
    unsafe {
        (*e).time_ns = now;
        (*e).addr = addr;
        (*e).family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
        (*e).qtype = opaque(&s.cq[cq::QTYPE]) as u32;
        (*e).verdict = verdict;
        (*e).rule_len = rule & 0xffff;
        (*e).rule_action = rule >> 16;
        let name = (*e).name.as_mut_ptr();
        let mut i = 0;
        while i < 32 {
            core::ptr::write_unaligned(name.add(i * 8) as *mut u64, 0);
            i += 1;
        }
        // The helper wants a length the verifier knows is 1..=256: the
        // name's length read back opaque, masked, plus its root byte. The
        // question was validated in full, so the copy fails only if
        // something is badly wrong; the event then carries no name.
        let n = (opaque(&s.cq[cq::NAME_LEN]) & 0xff) + 1;
        let copied = bpf_xdp_load_bytes(
            ctx.ctx,
            name_at as u32,
            name as *mut core::ffi::c_void,
            n as u32,
        );
        (*e).name_len = if copied == 0 { n as u32 } else { 0 };
    }
    entry.submit(0);
    st.sent += 1;
    action
}

//! The answer-cache program: answers a query in place from the `ANSWERS`
//! map, which the agent's forwarder fills with the answers it caches.
//!
//! It runs as a tail call from the main program, after that program has
//! checked the query and found no block pattern, so it is verified on its
//! own and adds nothing to the main program's verifier budget. What it
//! needs of the query waits in the scratch map (`answer::cq`).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use dnsfast_common::{
    answer::{
        cq, name_hash, name_matches, pad_name, AnswerKey, ListenKey, ANSWER_BODY_CAP,
        ANSWER_UDP_PAYLOAD, MAX_TTLS,
    },
    opaque, park, AddrKey, Scratch, FAMILY_V4, FAMILY_V6,
};

use crate::{
    packet::{be16, Headers, Packet, DNS_HDR_LEN, OFF_MASK},
    reply::{finish, put, OPT_LEN},
    Pass, ANSWERS, CLIENT_RATES, CONFIG, LISTEN_ADDRS,
};

/// Why a query was not answered from the cache.
pub enum Miss {
    /// Up it goes, to the forwarder or to whoever it is for.
    Pass,
    /// For the forwarder, from a client past its rate: dropped.
    OverRate,
}

/// Largest UDP datagram a cached answer can be: header, DNS header,
/// question, body, OPT.
const MAX_CACHE_UDP: usize = 8 + DNS_HDR_LEN + 255 + 4 + ANSWER_BODY_CAP + OPT_LEN;
/// A plain DNS answer over UDP holds at most 512 bytes.
const PLAIN_UDP_LIMIT: usize = 512;

/// `Ok(())` when the frame now holds the cached answer, ready for XDP_TX.
/// A query for the forwarder that the cache cannot answer goes up, unless
/// its client is past its rate.
#[inline(always)]
pub fn answer(ctx: &XdpContext, s: &mut Scratch) -> Result<(), Miss> {
    let hdrs = Headers {
        l3: opaque(&s.hdr[0]) & OFF_MASK,
        l4: opaque(&s.hdr[1]) & OFF_MASK,
        dns_end: opaque(&s.hdr[2]) & OFF_MASK,
        v6: opaque(&s.hdr[3]) != 0,
    };
    if !to_forwarder(&Packet::new(ctx), &hdrs) {
        return Err(Miss::Pass);
    }
    // Cached answers only while the agent that keeps them fresh (its
    // reloads and flushes delete what went stale) holds its lease.
    let answered = if crate::leased() {
        from_cache(ctx, s, &hdrs)
    } else {
        Err(Pass::NoMatch)
    };
    match answered {
        Ok(()) => Ok(()),
        Err(_) if over_rate(ctx, &hdrs) => Err(Miss::OverRate),
        Err(_) => Err(Miss::Pass),
    }
}

/// GCRA per client address: a query is within the rate when the client's
/// theoretical arrival time is at most the burst ahead of now; each one
/// within moves it on by the interval. No atomics: two CPUs racing on one
/// client can let an extra query through, never drop one within the rate
/// by more than that.
#[inline(always)]
fn over_rate(ctx: &XdpContext, hdrs: &Headers) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    let (interval, burst) = (cfg.client_interval_ns, cfg.client_burst_ns);
    if interval == 0 {
        return false;
    }
    let mut key = AddrKey {
        family: if hdrs.v6 { FAMILY_V6 } else { FAMILY_V4 },
        addr: [0; 16],
    };
    // A fresh view: the cache lookup may have moved the frame's end.
    if !Packet::new(ctx).src_addr(hdrs, &mut key.addr) {
        return false;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match CLIENT_RATES.get_ptr_mut(&key) {
        Some(tat) => {
            // SAFETY: a pointer into the map's value, valid for this run.
            let t = unsafe { *tat }.max(now);
            if t - now > burst {
                return true;
            }
            // SAFETY: as above.
            unsafe { *tat = t + interval };
            false
        }
        None => {
            // A new client starts with its burst whole; if the map cannot
            // take it (never, for an LRU), it goes up unbounded.
            let _ = CLIENT_RATES.insert(&key, &(now + interval), 0);
            false
        }
    }
}

/// `Ok(())` when the frame now holds the cached answer. Every check comes
/// before the first write, so a miss leaves the packet as it came.
#[inline(always)]
fn from_cache(ctx: &XdpContext, s: &mut Scratch, hdrs: &Headers) -> Result<(), Pass> {
    let hdrs = *hdrs;
    let qlen = opaque(&s.cq[cq::QLEN]) & 0x1ff;
    let len = opaque(&s.cq[cq::NAME_LEN]) & 0xff;
    let opt = opaque(&s.cq[cq::OPT]);
    let payload = opaque(&s.cq[cq::PAYLOAD]) & 0xffff;
    let qtype = opaque(&s.cq[cq::QTYPE]) as u16;

    let pkt = Packet::new(ctx);
    let dns = hdrs.l4 + 8;
    let h: *const [u8; DNS_HDR_LEN] = pkt.ptr(dns).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let (rd, cd) = unsafe { ((*h)[2] & 0x01, (*h)[3] & 0x10) };

    pad_name(s);
    let key = AnswerKey {
        hash: name_hash(s, len),
        qtype,
        bits: u16::from(opt & 0x80 != 0) | (u16::from(cd != 0) << 1),
        _pad: 0,
    };
    // SAFETY: a lookup; the value is only read.
    let a = unsafe { ANSWERS.get(&key) }.ok_or(Pass::NoMatch)?;
    if !name_matches(s, len, a) {
        return Err(Pass::NoMatch); // a hash collision
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= a.expires_ns {
        return Err(Pass::NoMatch);
    }
    let elapsed = ((now - a.stored_ns) / 1_000_000_000) as u32;

    let body_len = a.body_len as usize;
    if body_len == 0 || body_len > ANSWER_BODY_CAP {
        return Err(Pass::NoMatch);
    }
    park(&mut s.cq[cq::BODY_LEN], body_len);
    let opt_len = if opt != 0 { OPT_LEN } else { 0 };
    let dns_len = qlen + body_len + opt_len;
    // What does not fit the client's payload size goes up: the forwarder
    // answers it with TC set.
    let limit = if opt != 0 && payload > PLAIN_UDP_LIMIT {
        payload
    } else {
        PLAIN_UDP_LIMIT
    };
    if dns_len > limit {
        return Err(Pass::NoMatch);
    }
    let udp_len = 8 + dns_len;
    let delta = (hdrs.l4 + udp_len) as i32 - pkt.len() as i32;
    if delta != 0 {
        // SAFETY: plain helper call on our context. Growing needs tailroom,
        // which every XDP mode provides; if not, the query goes up as is.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(Pass::NoMatch);
        }
    }

    // From here on the frame is being rewritten; the checks above make
    // every failure below impossible, and each still fails open.
    let pkt = Packet::new(ctx);
    let body_at = dns + qlen;
    // The helper wants a length the verifier knows is 1..=512. A fresh,
    // opaque load shaped as ((n - 1) & 511) + 1 gives exactly that range
    // (and n itself for every n in it), which LLVM cannot fold away.
    let n = (opaque(&s.cq[cq::BODY_LEN]).wrapping_sub(1) & (ANSWER_BODY_CAP - 1)) + 1;
    // SAFETY: copies n bytes of the map value's body into the packet, which
    // now ends at least `body_len + opt_len` bytes past `body_at`.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            body_at as u32,
            a.body.as_ptr() as *mut core::ffi::c_void,
            n as u32,
        )
    };
    if rc != 0 {
        return Err(Pass::Malformed);
    }
    let nttl = a.nttl as usize;
    let mut i = 0;
    while i < MAX_TTLS {
        if i >= nttl {
            break;
        }
        // `get`, not indexing: LLVM loses the loop bound here and would
        // keep a panic path the kernel refuses to load.
        let (Some(&off), Some(&ttl)) = (a.ttl_off.get(i), a.ttl.get(i)) else {
            break;
        };
        let at = body_at + (off as usize & (ANSWER_BODY_CAP - 1));
        let t: *mut [u8; 4] = pkt.ptr(at).ok_or(Pass::Malformed)?;
        let ttl = ttl.saturating_sub(elapsed).to_be_bytes();
        // SAFETY: bounds checked by `ptr`.
        let t = unsafe { &mut *t };
        put(t, 0, ttl[0]);
        put(t, 1, ttl[1]);
        put(t, 2, ttl[2]);
        put(t, 3, ttl[3]);
        i += 1;
    }
    if opt != 0 {
        let o: *mut [u8; OPT_LEN] = pkt.ptr(body_at + body_len).ok_or(Pass::Malformed)?;
        // SAFETY: bounds checked by `ptr`.
        let o = unsafe { &mut *o };
        let size = ANSWER_UDP_PAYLOAD.to_be_bytes();
        let rr = [
            0,
            0,
            41,
            size[0],
            size[1],
            0,
            0,
            (opt & 0x80) as u8,
            0,
            0,
            0,
        ];
        let mut b = 0;
        while b < OPT_LEN {
            put(o, b, rr[b]);
            b += 1;
        }
    }
    let h: *mut [u8; DNS_HDR_LEN] = pkt.ptr(dns).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let h = unsafe { &mut *h };
    put(h, 2, a.flags[0] | rd);
    put(h, 3, a.flags[1] | cd);
    put(h, 4, 0);
    put(h, 5, 1);
    let ar = u16::from_be_bytes([a.counts[4], a.counts[5]]) + u16::from(opt != 0);
    put(h, 6, a.counts[0]);
    put(h, 7, a.counts[1]);
    put(h, 8, a.counts[2]);
    put(h, 9, a.counts[3]);
    put(h, 10, (ar >> 8) as u8);
    put(h, 11, ar as u8);
    finish::<MAX_CACHE_UDP>(&pkt, s, &hdrs, udp_len)
}

/// Whether the query is addressed to one of the forwarder's listen
/// addresses (or to any address on a port it listens on with a wildcard).
#[inline(always)]
fn to_forwarder(pkt: &Packet, hdrs: &Headers) -> bool {
    let Some(udp) = pkt.ptr::<[u8; 4]>(hdrs.l4) else {
        return false;
    };
    // SAFETY: bounds checked by `ptr`.
    let port = unsafe { be16((*udp)[2], (*udp)[3]) } as u32;
    let mut key = ListenKey {
        family: if hdrs.v6 { FAMILY_V6 } else { FAMILY_V4 },
        port,
        addr: [0; 16],
    };
    // SAFETY (both lookups): the value is not used.
    if unsafe { LISTEN_ADDRS.get(&key) }.is_some() {
        return true;
    }
    if !pkt.dst_addr(hdrs, &mut key.addr) {
        return false;
    }
    unsafe { LISTEN_ADDRS.get(&key) }.is_some()
}

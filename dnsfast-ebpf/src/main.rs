//! dnsfast XDP program: parse → verdict → reply.
//!
//! Answers a DNS query with NXDOMAIN in place (`XDP_TX`) when its name's
//! longest matching pattern is a block pattern, and passes everything else
//! up untouched. It fails open: nothing here aborts, and the one drop is
//! deliberate: a client past `xdp.client-qps` of queries to the forwarder
//! loses the excess here, before it can fill the forwarder's sockets.
#![no_std]
#![no_main]

mod cache;
mod labels;
mod name;
mod packet;
mod reply;
mod table;
mod watch;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use dnsfast_common::{
    answer::{cq, AnswerKey, CachedAnswer, ListenKey},
    labels::label_chunk,
    load8, opaque, park, AddrKey, Counters, Rule, Scratch, WatchEvent, WatchState, XdpConfig,
    ACTION_ALLOW, ACTION_BLOCK, ACTION_EXISTS, ACTION_EXISTS_WILD, ACTION_SUFFIX, ACTION_SUFFIX_NS,
    EVENTS_RING_BYTES, FAMILY_V4, FAMILY_V6, JUMP_CACHE, JUMP_WATCH, KEY_START_MASK, MAX_LABEL,
    MAX_LISTEN_ADDRS, MAX_RATE_CLIENTS, MAX_SERVER_ADDRS, SCRATCH_MASK, VERDICT_ALLOWED,
    VERDICT_CACHE, VERDICT_NXDOMAIN, VERDICT_PASS, WILDCARD_ANY, WILDCARD_STAR,
};

use packet::{be16, Packet, DNS_HDR_LEN};

#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

#[btf_map]
pub(crate) static CONFIG: Array<XdpConfig, 1> = Array::new();

#[btf_map]
static SERVER_ADDRS: HashMap<AddrKey, u32, { MAX_SERVER_ADDRS as usize }> = HashMap::new();

#[btf_map]
pub(crate) static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// The answer cache, filled by the forwarder; the agent sizes it to the
/// forwarder's cache at load time.
#[btf_map]
static ANSWERS: LruHashMap<AnswerKey, CachedAnswer, 10_000> = LruHashMap::new();

/// The forwarder's listen addresses: the only destinations the answer
/// cache answers for.
#[btf_map]
static LISTEN_ADDRS: HashMap<ListenKey, u32, { MAX_LISTEN_ADDRS as usize }> = HashMap::new();

/// See `dnsfast_common::MAP_LEASE`.
#[btf_map]
pub(crate) static LEASE: Array<u64, 1> = Array::new();

/// Whether the agent's lease runs: its fresh knowledge may be used.
#[inline(always)]
pub(crate) fn leased() -> bool {
    match LEASE.get(0) {
        Some(until) => {
            // SAFETY: plain helper call.
            let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
            now < *until
        }
        None => false,
    }
}

/// Per client address: the GCRA's theoretical arrival time (ns) of its
/// next query to the forwarder (see `XdpConfig::client_interval_ns`).
#[btf_map]
pub(crate) static CLIENT_RATES: LruHashMap<AddrKey, u64, { MAX_RATE_CLIENTS as usize }> =
    LruHashMap::new();

/// Slot `JUMP_CACHE`: the cache program, empty when the agent runs
/// without a cache. Slot `JUMP_WATCH`: the watch program, only while
/// someone runs `dnsfast watch`.
#[btf_map]
static JUMPS: ProgramArray<2> = ProgramArray::new();

/// Query events for `dnsfast watch`.
#[btf_map]
static EVENTS: RingBuf<WatchEvent, EVENTS_RING_BYTES> = RingBuf::new();

#[btf_map]
static WATCH_STATE: PerCpuArray<WatchState, 1> = PerCpuArray::new();

/// See `dnsfast_common::GLOBAL_BENCH_MODE`.
#[unsafe(no_mangle)]
static DNSFAST_BENCH_MODE: u8 = 0;

/// Why a packet was passed; one counter each.
#[derive(Clone, Copy)]
enum Pass {
    NotDns,
    Malformed,
    Unsupported,
    NoMatch,
    Allowed,
}

#[xdp]
pub fn dnsfast_xdp(ctx: XdpContext) -> u32 {
    let counters = COUNTERS.get_ptr_mut(0);
    if let Some(c) = counters {
        // SAFETY: per-CPU slot of this CPU; XDP runs with preemption off.
        unsafe { (*c).packets += 1 };
    }
    // A tail call into the cache program does not come back here; that
    // program counts the outcome itself.
    let verdict = handle(&ctx, counters);
    count(&ctx, counters, verdict, false)
}

/// Tail-called by `dnsfast_xdp` for a query no block pattern covers.
#[xdp]
pub fn dnsfast_cache(ctx: XdpContext) -> u32 {
    let counters = COUNTERS.get_ptr_mut(0);
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's slot, left by the main program just before.
    let s = unsafe { &mut *s };
    let verdict = match cache::answer(&ctx, s) {
        Ok(()) => Ok(()),
        Err(cache::Miss::OverRate) => {
            if let Some(c) = counters {
                // SAFETY: per-CPU slot of this CPU; XDP runs with preemption off.
                unsafe { (*c).dropped_rate_limited += 1 };
            }
            return xdp_action::XDP_DROP;
        }
        Err(cache::Miss::Pass) if s.cq[cq::REASON] == cq::REASON_ALLOWED => Err(Pass::Allowed),
        Err(cache::Miss::Pass) => Err(Pass::NoMatch),
    };
    count(&ctx, counters, verdict, true)
}

/// Tail-called with a decided query while someone watches.
#[xdp]
pub fn dnsfast_watch(ctx: XdpContext) -> u32 {
    let (Some(s), Some(c)) = (SCRATCH.get(0), COUNTERS.get(0)) else {
        return xdp_action::XDP_PASS;
    };
    watch::emit(&ctx, s, c.last)
}

/// Counts the outcome and turns it into the XDP action. A decided query
/// then goes to the watch program, which finds its verdict in
/// `Counters::last` (a plain store per path: anything heavier here, at the
/// end of every path, would multiply the verifier's work).
#[inline(always)]
fn count(
    ctx: &XdpContext,
    counters: Option<*mut Counters>,
    verdict: Result<(), Pass>,
    cached: bool,
) -> u32 {
    let action = match verdict {
        Ok(()) => xdp_action::XDP_TX,
        Err(_) => xdp_action::XDP_PASS,
    };
    let Some(c) = counters else {
        return action;
    };
    // SAFETY: per-CPU slot of this CPU; XDP runs with preemption off.
    let c = unsafe { &mut *c };
    let watched = |code: u32| u64::from(code) | (u64::from(action) << 8);
    match verdict {
        Ok(()) if cached => {
            c.answered_cache += 1;
            c.last = watched(VERDICT_CACHE);
        }
        Ok(()) => {
            c.answered_nxdomain += 1;
            c.last = watched(VERDICT_NXDOMAIN);
        }
        Err(Pass::NotDns) => c.pass_not_dns += 1,
        Err(Pass::Malformed) => c.pass_malformed += 1,
        Err(Pass::Unsupported) => c.pass_unsupported += 1,
        Err(Pass::NoMatch) => {
            c.pass_no_match += 1;
            c.last = watched(VERDICT_PASS);
        }
        Err(Pass::Allowed) => {
            c.pass_allowed += 1;
            c.last = watched(VERDICT_ALLOWED);
        }
    }
    if matches!(verdict, Ok(()) | Err(Pass::NoMatch) | Err(Pass::Allowed)) {
        // SAFETY: on success control continues in `dnsfast_watch`, which
        // returns the same action; with the slot empty (nobody watches)
        // the call returns here.
        unsafe { JUMPS.tail_call(ctx, JUMP_WATCH) };
    }
    action
}

/// Returns XDP_PASS and does nothing else. `cargo xtask bench` times it to
/// report the cost of BPF_PROG_TEST_RUN itself next to the real program's.
#[xdp]
pub fn dnsfast_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn bench_mode() -> bool {
    // SAFETY: reading a plain static; volatile so the value set at load time
    // is what the verifier sees, not a compile-time constant.
    unsafe { core::ptr::read_volatile(&DNSFAST_BENCH_MODE) != 0 }
}

/// `Ok(())` when the packet was rewritten into an answer to send back.
#[inline(always)]
fn handle(ctx: &XdpContext, counters: Option<*mut Counters>) -> Result<(), Pass> {
    let pkt = Packet::new(ctx);
    let cfg = CONFIG.get(0).ok_or(Pass::NotDns)?;
    let hdrs = packet::parse_headers(&pkt, cfg)?;
    if cfg.filter_dst != 0 && !is_server_addr(&pkt, &hdrs) {
        return Err(Pass::NotDns);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Pass::NotDns)?;
    // SAFETY: this CPU's slot; nothing else touches it while we run.
    let scratch = unsafe { &mut *scratch };
    // From here on the layout goes through map memory: with up to two VLAN
    // tags and two IP versions, each known offset would otherwise be its own
    // verifier path through everything below, too many for Linux 6.1.
    let hdrs = packet::launder(scratch, hdrs);

    // DNS header.
    let dns = hdrs.l4 + 8;
    let h: *const [u8; DNS_HDR_LEN] = pkt.ptr(dns).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let h = unsafe { &*h };
    if h[2] & 0x80 != 0 && !bench_mode() {
        return Err(Pass::NotDns); // a response, not a query
    }
    if let Some(c) = counters {
        // SAFETY: as above.
        unsafe { (*c).dns_queries += 1 };
    }
    let opcode = (h[2] >> 3) & 0x0f;
    let (qd, an, ns, ar) = (
        be16(h[4], h[5]),
        be16(h[6], h[7]),
        be16(h[8], h[9]),
        be16(h[10], h[11]),
    );
    if opcode != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return Err(Pass::Unsupported);
    }

    // Question name → label-reversed key in per-CPU scratch.
    let name_off = dns + DNS_HDR_LEN;
    let dns_end = hdrs.dns_end;
    let avail = dns_end.saturating_sub(name_off);
    if name::dnsfast_encode(ctx.ctx, name_off as u64, avail as u64) == 0 {
        return Err(Pass::Malformed);
    }
    let len = opaque(&scratch.name_len) & 0xff;

    // QTYPE/QCLASS.
    let qtail = name_off + len + 1;
    let q: *const [u8; 4] = pkt.ptr(qtail).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let q = unsafe { &*q };
    if qtail + 4 > dns_end {
        return Err(Pass::Malformed);
    }
    if be16(q[2], q[3]) != 1 {
        return Err(Pass::Unsupported); // QCLASS other than IN
    }
    let qend = qtail + 4;

    // Additional section: nothing, or exactly one EDNS0 OPT at the end.
    // Plain integers, not an Option: LLVM would read the Option's bytes
    // even where it left them unwritten, which the verifier refuses.
    let (opt_word, payload) = if ar == 1 {
        let o = reply::check_opt(&pkt, qend, dns_end)?;
        (0x100 | o.do_bit as usize, o.payload as usize)
    } else if qend != dns_end {
        return Err(Pass::Malformed);
    } else {
        (0, 0)
    };
    // What the cache program will need, should it run; parked now so that
    // little stays live across the lookup.
    park(&mut scratch.cq[cq::QLEN], qend - dns);
    park(&mut scratch.cq[cq::NAME_LEN], len);
    park(&mut scratch.cq[cq::QTYPE], be16(q[0], q[1]) as usize);
    park(&mut scratch.cq[cq::OPT], opt_word);
    park(&mut scratch.cq[cq::PAYLOAD], payload);

    // The longest pattern decides: found by the encoder's global function,
    // which parked it (action << 16 | key length, 0 for none).
    let found = opaque(&scratch.cq[cq::RULE]) as u64;
    let rule = (found != 0).then_some(Rule {
        action: (found >> 16) as u32,
        key_len: (found & 0xffff) as u32,
    });
    let pass = match rule {
        Some(rule) if rule.action == ACTION_BLOCK => None,
        Some(rule) if rule.action == ACTION_ALLOW => Some(Pass::Allowed),
        // The longest match is a search suffix: a search-path artifact if
        // the label before it is a TLD (a second, exact lookup). Under a
        // folded parent, a namespace label first makes the suffix longer.
        Some(rule) if rule.action == ACTION_SUFFIX || rule.action == ACTION_SUFFIX_NS => {
            let mut suffix = rule.key_len as usize;
            if rule.action == ACTION_SUFFIX_NS {
                suffix = namespace_suffix(scratch, suffix);
            }
            if is_artifact(suffix) {
                None
            } else {
                Some(Pass::NoMatch)
            }
        }
        // The longest match is a name that exists (the Kubernetes API said
        // so): the name itself passes, and so does a wildcard just below
        // it where CoreDNS answers one; anything else below does not exist.
        // Only while the agent's lease runs: the API's knowledge is only as
        // fresh as the agent that keeps it.
        Some(rule) if rule.action == ACTION_EXISTS || rule.action == ACTION_EXISTS_WILD => {
            let at = rule.key_len as usize & 0xff;
            if at >= len
                || !leased()
                || (rule.action == ACTION_EXISTS_WILD && wildcard_below(scratch, at))
            {
                Some(Pass::NoMatch)
            } else {
                None
            }
        }
        _ => Some(Pass::NoMatch),
    };
    if let Some(pass) = pass {
        // Not blocked: perhaps the answer cache has it.
        park(
            &mut scratch.cq[cq::REASON],
            if matches!(pass, Pass::Allowed) {
                cq::REASON_ALLOWED as usize
            } else {
                cq::REASON_NO_MATCH as usize
            },
        );
        // SAFETY: on success control continues in `dnsfast_cache`; with the
        // slot empty it returns here.
        unsafe { JUMPS.tail_call(ctx, JUMP_CACHE) };
        return Err(pass);
    }

    #[cfg(feature = "log")]
    aya_log_ebpf::debug!(ctx, "NXDOMAIN in place: name of {} bytes", len);
    let opt = (opt_word != 0).then_some((opt_word & 0x80) as u8);
    reply::nxdomain(ctx, scratch, &hdrs, qend - dns, opt)
}

/// The length of `<L>.P` when the label L after suffix P (of `suffix_len`
/// key bytes) is a namespace, else `suffix_len`. With fewer than two
/// labels after P the answer cannot matter (nothing before either suffix
/// could look qualified), so it is not looked up.
#[inline(always)]
fn namespace_suffix(scratch: &mut Scratch, suffix_len: usize) -> usize {
    let label = labels::dnsfast_label_in(labels::SET_NAMESPACES, suffix_len as u64) as usize;
    if label == 0 {
        return suffix_len;
    }
    let longer = suffix_len + (label & 0x7f);
    // For `dnsfast watch`: the rule that decided is the namespace's.
    park(
        &mut scratch.cq[cq::RULE],
        (longer & 0xffff) | ((ACTION_SUFFIX as usize) << 16),
    );
    longer
}

/// Whether the label right after the first `suffix_len` bytes of the
/// encoded name (it has one: the caller checked) is a CoreDNS wildcard,
/// `*` or `any`: both fit the first 8 bytes of a label key.
#[inline(always)]
fn wildcard_below(scratch: &Scratch, suffix_len: usize) -> bool {
    let at = ((opaque(&scratch.key_start) & KEY_START_MASK) + suffix_len) & SCRATCH_MASK;
    let v = load8(scratch, at);
    let head = label_chunk(v, (v & 0xff) as usize & MAX_LABEL, 0);
    head == WILDCARD_STAR || head == WILDCARD_ANY
}

#[inline(always)]
fn is_artifact(suffix_len: usize) -> bool {
    labels::dnsfast_label_in(labels::SET_TLDS, suffix_len as u64) != 0
}

#[inline(always)]
fn is_server_addr(pkt: &Packet, hdrs: &packet::Headers) -> bool {
    let mut key = core::mem::MaybeUninit::<AddrKey>::uninit();
    // SAFETY: both fields are written before the key is read.
    let key = unsafe {
        let k = key.as_mut_ptr();
        (*k).family = if hdrs.v6 { FAMILY_V6 } else { FAMILY_V4 };
        if !pkt.dst_addr(hdrs, &mut (*k).addr) {
            return false;
        }
        key.assume_init()
    };
    // SAFETY: lookup only; the value is not used.
    unsafe { SERVER_ADDRS.get(&key).is_some() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

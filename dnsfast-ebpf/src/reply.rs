//! Turning a validated query into an NXDOMAIN answer in place.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr};

use dnsfast_common::{opaque, park, Scratch};

use crate::{
    packet::{be16, Headers, Packet, DNS_HDR_LEN},
    Pass,
};

/// Size of an OPT record with no options.
pub const OPT_LEN: usize = 11;
const TYPE_OPT: u16 = 41;
/// Largest UDP datagram an NXDOMAIN answer can be: header, DNS header,
/// 255-byte name, QTYPE/QCLASS, OPT.
pub const MAX_NXDOMAIN_UDP: usize = 8 + DNS_HDR_LEN + 255 + 4 + OPT_LEN;

/// The query's EDNS0 OPT record: its DO bit (0x80 or 0) and UDP payload size.
#[derive(Clone, Copy)]
pub struct Opt {
    pub do_bit: u8,
    pub payload: u16,
}

/// Validates the one additional record as an EDNS0 OPT that ends the message.
#[inline(always)]
pub fn check_opt(pkt: &Packet, at: usize, dns_end: usize) -> Result<Opt, Pass> {
    let o: *const [u8; OPT_LEN] = pkt.ptr(at).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let o = unsafe { &*o };
    if o[0] != 0 || be16(o[1], o[2]) != TYPE_OPT {
        return Err(Pass::Unsupported); // TSIG, SIG(0) or another record
    }
    let rdlen = be16(o[9], o[10]) as usize;
    if at + OPT_LEN + rdlen != dns_end {
        return Err(Pass::Malformed);
    }
    if o[6] != 0 {
        return Err(Pass::Unsupported); // EDNS version > 0 wants BADVERS
    }
    Ok(Opt {
        do_bit: o[7] & 0x80,
        payload: be16(o[3], o[4]),
    })
}

/// Rewrites the frame into the answer and trims it. `qlen` is the length of
/// the DNS header plus question; `opt` is the query's DO bit when it carried
/// an OPT record. Everything was validated before this runs, so every
/// failure here is "cannot happen" and still fails open.
#[inline(always)]
pub fn nxdomain(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    hdrs: &Headers,
    qlen: usize,
    opt: Option<u8>,
) -> Result<(), Pass> {
    let pkt = Packet::new(ctx);
    let dns = hdrs.l4 + 8;
    let dns_len = qlen + if opt.is_some() { OPT_LEN } else { 0 };
    let udp_len = 8 + dns_len;

    // DNS header: QR=1, keep ID, OPCODE and RD; AA=0, TC=0; RA=1, keep CD,
    // Z=0, AD=0, RCODE=NXDOMAIN. One question, no answers, no authority.
    let h: *mut [u8; DNS_HDR_LEN] = pkt.ptr(dns).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let h = unsafe { &mut *h };
    put(h, 2, 0x80 | (h[2] & 0x79));
    put(h, 3, 0x80 | (h[3] & 0x10) | 3);
    // The four counts in one store: QDCOUNT 1, ANCOUNT 0, NSCOUNT 0,
    // ARCOUNT 1 with an OPT record, else 0.
    let counts = u64::from_ne_bytes([0, 1, 0, 0, 0, 0, 0, opt.is_some() as u8]);
    // SAFETY: bytes 4..12 of the 12-byte header; unaligned stores are fine
    // on the targets dnsfast builds for (see build.rs).
    unsafe { core::ptr::write_unaligned(h.as_mut_ptr().add(4) as *mut u64, counts) };

    // OPT: keep name, type and the UDP payload size (CLASS); extended RCODE
    // 0, version 0, echo DO, no options.
    if let Some(do_bit) = opt {
        let o: *mut [u8; OPT_LEN] = pkt.ptr(dns + qlen).ok_or(Pass::Malformed)?;
        // SAFETY: bounds checked by `ptr`.
        let o = unsafe { &mut *o };
        put(o, 5, 0);
        put(o, 6, 0);
        put(o, 7, do_bit);
        put(o, 8, 0);
        put(o, 9, 0);
        put(o, 10, 0);
    }

    finish::<MAX_NXDOMAIN_UDP>(&pkt, scratch, hdrs, udp_len)?;

    let delta = (hdrs.l4 + udp_len) as i32 - pkt.len() as i32;
    if delta < 0 {
        // Can only fail when shrinking below the Ethernet header, which this
        // never does; the IP and UDP lengths already tell receivers the size.
        // SAFETY: plain helper call on our context.
        let _ = unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) };
    }
    Ok(())
}

/// Turns the frame around once the DNS message of `udp_len - 8` bytes is in
/// place: swaps Ethernet, IP and UDP addresses, sets the lengths, and the
/// checksums (IPv4 header; IPv6 UDP, summed over at most `MAX` bytes).
#[inline(always)]
pub fn finish<const MAX: usize>(
    pkt: &Packet,
    scratch: &mut Scratch,
    hdrs: &Headers,
    udp_len: usize,
) -> Result<(), Pass> {
    let udp: *mut UdpHdr = pkt.ptr(hdrs.l4).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let udp = unsafe { &mut *udp };
    core::mem::swap(&mut udp.src, &mut udp.dst);
    udp.len = (udp_len as u16).to_be_bytes();
    udp.check = [0, 0];

    if hdrs.v6 {
        let ip: *mut Ipv6Hdr = pkt.ptr(hdrs.l3).ok_or(Pass::Malformed)?;
        // SAFETY: bounds checked by `ptr`.
        let ip = unsafe { &mut *ip };
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        ip.payload_len = (udp_len as u16).to_be_bytes();
        ip.hop_limit = 64;
        // Computed from scratch: pod veths offload TX checksums, so the
        // query's value is no safe base for an incremental update.
        let mut sum = sum_words(&ip.src_addr) + sum_words(&ip.dst_addr) + udp_len as u32 + 17;
        sum += sum_packet::<MAX>(pkt, scratch, hdrs.l4, udp_len);
        let c = fold(sum);
        let udp: *mut UdpHdr = pkt.ptr(hdrs.l4).ok_or(Pass::Malformed)?;
        // SAFETY: bounds checked by `ptr`. A computed 0 is sent as 0xffff.
        unsafe { (*udp).check = (if c == 0 { 0xffff } else { c }).to_be_bytes() };
    } else {
        let ip: *mut Ipv4Hdr = pkt.ptr(hdrs.l3).ok_or(Pass::Malformed)?;
        // SAFETY: bounds checked by `ptr`.
        let ip = unsafe { &mut *ip };
        core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
        ip.tot_len = ((Ipv4Hdr::LEN + udp_len) as u16).to_be_bytes();
        ip.ttl = 64;
        ip.check = [0, 0];
        ip.check = ipv4_checksum(ip).to_ne_bytes();
        // The UDP checksum stays 0: legal over IPv4.
    }

    let eth: *mut EthHdr = pkt.ptr(0).ok_or(Pass::Malformed)?;
    // SAFETY: bounds checked by `ptr`.
    let eth = unsafe { &mut *eth };
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
    Ok(())
}

/// A byte store LLVM may not merge with its neighbours. Runs of zero stores
/// otherwise become a `memset` call, which the kernel will not load.
#[inline(always)]
pub fn put<const N: usize>(b: &mut [u8; N], i: usize, v: u8) {
    if i < N {
        // SAFETY: in bounds, checked just above (and constant-folded).
        unsafe { core::ptr::write_volatile(b.as_mut_ptr().add(i), v) };
    }
}

/// The IPv4 header checksum of `ip` (its `check` field zero), in memory
/// order: the one's complement sum is the same whichever order its 16-bit
/// words are added in, so the header is summed as five native 32-bit words
/// and folded.
#[inline(always)]
fn ipv4_checksum(ip: &Ipv4Hdr) -> u16 {
    let p = ip as *const Ipv4Hdr as *const u32;
    let mut sum = 0u64;
    let mut i = 0;
    while i < Ipv4Hdr::LEN / 4 {
        // SAFETY: i < 5: inside the 20-byte header; unaligned reads are
        // fine on the targets dnsfast builds for.
        sum += u64::from(unsafe { core::ptr::read_unaligned(p.add(i)) });
        i += 1;
    }
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn sum_words<const N: usize>(b: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += be16(b[i], b[i + 1]) as u32;
        i += 2;
    }
    sum
}

/// One's-complement sum of `len` packet bytes from `off`, odd tail padded.
/// The length and the running sum live in map memory and are reloaded on
/// every step: with them in registers, each step's exit leaves a different
/// known range and older verifiers (Linux 6.1) run out of budget walking
/// them all.
#[inline(always)]
fn sum_packet<const MAX: usize>(pkt: &Packet, s: &mut Scratch, off: usize, len: usize) -> u32 {
    park(&mut s.csum_len, len);
    park(&mut s.csum_acc, 0);
    let mut i = 0usize;
    while i < MAX {
        let len = opaque(&s.csum_len);
        if i >= len {
            break;
        }
        let word = if i + 1 < len {
            match pkt.ptr::<[u8; 2]>(off + i) {
                // SAFETY: bounds checked by `ptr`.
                Some(w) => usize::from(unsafe { be16((*w)[0], (*w)[1]) }),
                None => break,
            }
        } else {
            match pkt.byte(off + i) {
                Some(b) => (b as usize) << 8,
                None => break,
            }
        };
        let acc = opaque(&s.csum_acc);
        park(&mut s.csum_acc, acc + word);
        i += 2;
    }
    opaque(&s.csum_acc) as u32
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

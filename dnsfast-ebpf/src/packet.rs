//! Bounds-checked packet access and the L2–L4 parse.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use dnsfast_common::{opaque, park, Scratch, XdpConfig, MAX_PORTS};

use crate::Pass;

pub const DNS_HDR_LEN: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
/// Offsets beyond this are never DNS we answer; masking with it gives the
/// verifier a bound on every computed offset.
pub const OFF_MASK: usize = 0x7ff;

#[inline(always)]
pub fn be16(hi: u8, lo: u8) -> u16 {
    ((hi as u16) << 8) | lo as u16
}

pub struct Packet {
    ctx: *mut xdp_md,
    pub start: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            ctx: ctx.ctx,
            start: ctx.data(),
        }
    }

    /// `data_end`, loaded afresh each time. Otherwise LLVM proves a bounds
    /// check redundant from earlier length arithmetic and drops it, and the
    /// verifier, which does not follow that arithmetic, rejects the access.
    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: `ctx` is the program's context pointer.
        unsafe { core::ptr::read_volatile(&(*self.ctx).data_end) as usize }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end() - self.start
    }

    /// Pointer to a `T` at `off`, if all of it lies inside the packet.
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        let p = self.start + (off & OFF_MASK);
        if p + core::mem::size_of::<T>() > self.end() {
            return None;
        }
        Some(p as *mut T)
    }

    #[inline(always)]
    pub fn byte(&self, off: usize) -> Option<u8> {
        let p = self.start + (off & OFF_MASK);
        // `p + 1 > end` would become `p >= end`, from which the verifier
        // grants no readable byte; an opaque 1 keeps the form it follows.
        if p + core::hint::black_box(1) > self.end() {
            return None;
        }
        // SAFETY: bounds checked just above.
        Some(unsafe { *(p as *const u8) })
    }

    /// Copies the destination address into `out`; false if out of bounds.
    #[inline(always)]
    pub fn dst_addr(&self, h: &Headers, out: &mut [u8; 16]) -> bool {
        self.addr(h, out, false)
    }

    /// Copies the source address into `out`; false if out of bounds.
    #[inline(always)]
    pub fn src_addr(&self, h: &Headers, out: &mut [u8; 16]) -> bool {
        self.addr(h, out, true)
    }

    #[inline(always)]
    fn addr(&self, h: &Headers, out: &mut [u8; 16], src: bool) -> bool {
        if h.v6 {
            match self.ptr::<Ipv6Hdr>(h.l3) {
                // SAFETY: bounds checked by `ptr`.
                Some(ip) => {
                    *out = unsafe {
                        if src {
                            (*ip).src_addr
                        } else {
                            (*ip).dst_addr
                        }
                    }
                }
                None => return false,
            }
        } else {
            match self.ptr::<Ipv4Hdr>(h.l3) {
                Some(ip) => {
                    // SAFETY: bounds checked by `ptr`.
                    let a = unsafe {
                        if src {
                            (*ip).src_addr
                        } else {
                            (*ip).dst_addr
                        }
                    };
                    let mut i = 0;
                    while i < 16 {
                        let v = if i < 4 { a[i] } else { 0 };
                        // SAFETY: i < 16. Volatile so the zeros do not
                        // become a `memset` call the kernel cannot load.
                        unsafe { core::ptr::write_volatile(out.as_mut_ptr().add(i), v) };
                        i += 1;
                    }
                }
                None => return false,
            }
        }
        true
    }
}

/// `h` written to and read back from map memory: same values, but opaque to
/// LLVM and the verifier (see `dnsfast_common::name::opaque`).
#[inline(always)]
pub fn launder(s: &mut Scratch, h: Headers) -> Headers {
    park(&mut s.hdr[0], h.l3);
    park(&mut s.hdr[1], h.l4);
    park(&mut s.hdr[2], h.dns_end);
    park(&mut s.hdr[3], h.v6 as usize);
    Headers {
        l3: opaque(&s.hdr[0]) & OFF_MASK,
        l4: opaque(&s.hdr[1]) & OFF_MASK,
        dns_end: opaque(&s.hdr[2]) & OFF_MASK,
        v6: opaque(&s.hdr[3]) != 0,
    }
}

/// Where the layers of a UDP datagram sit.
#[derive(Clone, Copy)]
pub struct Headers {
    pub v6: bool,
    pub l3: usize,
    pub l4: usize,
    /// Offset just past the UDP payload (the IP length decides, not the
    /// frame: Ethernet padding is not DNS).
    pub dns_end: usize,
}

/// Ethernet, up to two VLAN tags, IPv4 without options or fragments, or IPv6
/// without extension headers, then UDP to one of the configured DNS ports.
/// The port is checked before anything else about the datagram, so
/// non-DNS traffic costs as little as possible and counts as "not DNS".
#[inline(always)]
pub fn parse_headers(pkt: &Packet, cfg: &XdpConfig) -> Result<Headers, Pass> {
    let eth: *const EthHdr = pkt.ptr(0).ok_or(Pass::NotDns)?;
    // SAFETY: bounds checked by `ptr`.
    let mut proto = u16::from_be(unsafe { (*eth).ether_type });
    // No frame comes from a group MAC address: a forged one would turn the
    // answer into a reflection.
    // SAFETY: as above.
    let group_src = unsafe { (*eth).src_addr[0] } & 1 != 0;
    let mut l3 = EthHdr::LEN;
    // 802.1ad outer tag, then 802.1Q: at most two, unrolled for the verifier.
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let tag: *const [u8; 4] = pkt.ptr(l3).ok_or(Pass::NotDns)?;
            // SAFETY: bounds checked by `ptr`.
            let tag = unsafe { &*tag };
            proto = be16(tag[2], tag[3]);
            l3 += 4;
        }
    }

    // `unsupported` holds a reason to pass that only matters if this turns
    // out to be DNS.
    let (v6, l4, ip_end, unsupported) = match proto {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = pkt.ptr(l3).ok_or(Pass::NotDns)?;
            // SAFETY: bounds checked by `ptr`.
            let ip = unsafe { &*ip };
            if ip.proto != IPPROTO_UDP {
                return Err(Pass::NotDns);
            }
            let frags = be16(ip.frags[0], ip.frags[1]);
            if frags & 0x1fff != 0 {
                return Err(Pass::NotDns); // a later fragment: no UDP header here
            }
            let ihl = (ip.vihl & 0x0f) as usize * 4;
            let tot = be16(ip.tot_len[0], ip.tot_len[1]) as usize;
            // Options, or the first of several fragments (MF).
            let unsupported = ihl != Ipv4Hdr::LEN || frags & 0x2000 != 0;
            // Addresses the stack would not answer from or to: a
            // multicast, reserved or broadcast (224/3) or unspecified
            // source, a group destination, or loopback from outside.
            let (s, d) = (ip.src_addr, ip.dst_addr);
            let odd =
                s[0] >= 224 || s == [0, 0, 0, 0] || d[0] >= 224 || (d[0] == 127 && s[0] != 127);
            let unsupported = unsupported || odd || group_src;
            if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
                return Err(Pass::Malformed);
            }
            (false, l3 + ihl, l3 + tot, unsupported)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = pkt.ptr(l3).ok_or(Pass::NotDns)?;
            // SAFETY: bounds checked by `ptr`.
            let ip = unsafe { &*ip };
            if ip.next_hdr != IPPROTO_UDP {
                // Extension headers would have to be walked to find out
                // whether UDP to a DNS port follows; the stack does that.
                return Err(if is_ipv6_ext(ip.next_hdr) {
                    Pass::Unsupported
                } else {
                    Pass::NotDns
                });
            }
            if ip.vcf[0] >> 4 != 6 {
                return Err(Pass::Malformed);
            }
            let payload = be16(ip.payload_len[0], ip.payload_len[1]) as usize;
            // As for IPv4: a multicast (ff00::/8) or unspecified source, a
            // multicast destination, or ::1 from outside.
            let (s, d) = (&ip.src_addr, &ip.dst_addr);
            let loopback = |a: &[u8; 16]| a[..15] == [0u8; 15] && a[15] == 1;
            let odd =
                s[0] == 0xff || *s == [0u8; 16] || d[0] == 0xff || (loopback(d) && !loopback(s));
            (
                true,
                l3 + Ipv6Hdr::LEN,
                l3 + Ipv6Hdr::LEN + payload,
                odd || group_src,
            )
        }
        _ => return Err(Pass::NotDns),
    };

    let udp: *const UdpHdr = pkt.ptr(l4).ok_or(Pass::NotDns)?;
    // SAFETY: bounds checked by `ptr`.
    let udp = unsafe { &*udp };
    let dst_port = be16(udp.dst[0], udp.dst[1]);
    if !is_dns_port(cfg, dst_port) {
        return Err(Pass::NotDns);
    }
    if unsupported {
        return Err(Pass::Unsupported);
    }
    let udp_len = be16(udp.len[0], udp.len[1]) as usize;
    // The UDP and IP lengths must agree and fit in the frame; a DNS header
    // must fit too. Anything else is for the stack to judge.
    if l4 + udp_len != ip_end || ip_end > pkt.len() || udp_len < 8 + DNS_HDR_LEN {
        return Err(Pass::Malformed);
    }
    // Offsets are masked to OFF_MASK from here on (a bound the verifier
    // needs): a datagram ending past it would be read short, so it is
    // left to the stack (jumbo frames: no query we answer is that long).
    if ip_end > OFF_MASK {
        return Err(Pass::Unsupported);
    }
    Ok(Headers {
        v6,
        l3,
        l4,
        dns_end: ip_end,
    })
}

#[inline(always)]
fn is_dns_port(cfg: &XdpConfig, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_PORTS {
        if cfg.ports[i] != 0 && cfg.ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// IPv6 extension header numbers (RFC 7045 list plus ESP/AH).
#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

//! Building test frames around DNS messages, and taking replies apart.

use std::net::IpAddr;

use dnsfast_common::frame;
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{rdata::opt::EdnsOption, DNSClass, Name, RecordType},
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_V4: [u8; 4] = [10, 99, 0, 2];
pub const SERVER_V4: [u8; 4] = [10, 99, 0, 1];
pub const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const SERVER_V6: [u8; 16] = [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const CLIENT_PORT: u16 = 40123;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ip {
    V4,
    V6,
}

/// How to wrap a DNS message into a frame.
#[derive(Clone, Debug)]
pub struct Wrap {
    pub ip: Ip,
    /// TPIDs of VLAN tags, outermost first (0x88a8, 0x8100).
    pub vlans: Vec<u16>,
    pub sport: u16,
    pub dport: u16,
}

impl Wrap {
    pub fn v4() -> Self {
        Self {
            ip: Ip::V4,
            vlans: vec![],
            sport: CLIENT_PORT,
            dport: 53,
        }
    }
    pub fn v6() -> Self {
        Self {
            ip: Ip::V6,
            ..Self::v4()
        }
    }
    pub fn vlans(mut self, v: &[u16]) -> Self {
        self.vlans = v.to_vec();
        self
    }
}

/// Options of a query built with hickory-proto.
#[derive(Clone, Debug)]
pub struct Q {
    pub name: String,
    pub qtype: RecordType,
    pub id: u16,
    pub rd: bool,
    pub cd: bool,
    /// (UDP payload size, DO bit, options)
    pub edns: Option<(u16, bool, Vec<EdnsOption>)>,
}

impl Q {
    pub fn new(name: &str, qtype: RecordType) -> Self {
        Self {
            name: name.to_string(),
            qtype,
            id: 0x1234,
            rd: true,
            cd: false,
            edns: None,
        }
    }

    pub fn edns(mut self, size: u16, dnssec_ok: bool, opts: Vec<EdnsOption>) -> Self {
        self.edns = Some((size, dnssec_ok, opts));
        self
    }

    pub fn message(&self) -> Message {
        let mut m = Message::new(self.id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = self.rd;
        m.metadata.checking_disabled = self.cd;
        let name = Name::from_ascii(&self.name).expect("test name parses");
        m.add_query(Query::query(name, self.qtype));
        if let Some((size, dok, opts)) = &self.edns {
            let mut e = Edns::new();
            e.set_max_payload(*size);
            e.set_dnssec_ok(*dok);
            for o in opts {
                e.options_mut().insert(o.clone());
            }
            m.set_edns(e);
        }
        m
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.message().to_vec().expect("test query encodes")
    }
}

/// A query with an arbitrary question name in wire form (for malformed names).
pub fn raw_query(wire_name: &[u8], qtype: u16, qclass: u16) -> Vec<u8> {
    let mut d = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    d.extend_from_slice(wire_name);
    d.extend_from_slice(&qtype.to_be_bytes());
    d.extend_from_slice(&qclass.to_be_bytes());
    d
}

pub fn query_with_class(name: &str, class: DNSClass) -> Vec<u8> {
    let mut m = Q::new(name, RecordType::A).message();
    m.queries[0].set_query_class(class);
    m.to_vec().unwrap()
}

/// Wraps `dns` in UDP, IP and Ethernet (with VLAN tags), with the
/// agent's own frame builder; the UDP checksum is deliberately wrong
/// (0xdead): the program must never reuse it.
pub fn frame(w: &Wrap, dns: &[u8]) -> Vec<u8> {
    frame_wrap(w).frame(dns)
}

/// The common frame builder's settings for `w`, to change one of them.
pub fn frame_wrap(w: &Wrap) -> frame::Wrap {
    let (src, dst): (IpAddr, IpAddr) = match w.ip {
        Ip::V4 => (CLIENT_V4.into(), SERVER_V4.into()),
        Ip::V6 => (CLIENT_V6.into(), SERVER_V6.into()),
    };
    frame::Wrap {
        dst_mac: SERVER_MAC,
        src_mac: CLIENT_MAC,
        vlans: w.vlans.clone(),
        src,
        dst,
        sport: w.sport,
        dport: w.dport,
        udp_check: 0xdead,
    }
}

pub use frame::{fold, ipv4_checksum, ones_sum};

/// A frame taken apart.
#[derive(Debug)]
pub struct Parts<'a> {
    pub eth_dst: &'a [u8],
    pub eth_src: &'a [u8],
    pub vlan_tags: Vec<&'a [u8]>,
    pub ip: Ip,
    pub l3: &'a [u8],
    pub sport: u16,
    pub dport: u16,
    pub udp_len: usize,
    pub udp_check: u16,
    pub udp: &'a [u8],
    pub dns: &'a [u8],
}

pub fn parse(f: &[u8]) -> Parts<'_> {
    let mut off = 12;
    let mut tags = vec![];
    let mut et = u16::from_be_bytes([f[off], f[off + 1]]);
    while et == 0x8100 || et == 0x88a8 {
        tags.push(&f[off..off + 4]);
        off += 4;
        et = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    off += 2;
    let (ip, l3_len) = match et {
        0x0800 => (Ip::V4, ((f[off] & 0x0f) as usize) * 4),
        0x86dd => (Ip::V6, 40),
        other => panic!("unexpected ethertype {other:#x}"),
    };
    let l3 = &f[off..off + l3_len];
    let u = off + l3_len;
    let udp_len = u16::from_be_bytes([f[u + 4], f[u + 5]]) as usize;
    Parts {
        eth_dst: &f[0..6],
        eth_src: &f[6..12],
        vlan_tags: tags,
        ip,
        l3,
        sport: u16::from_be_bytes([f[u], f[u + 1]]),
        dport: u16::from_be_bytes([f[u + 2], f[u + 3]]),
        udp_len,
        udp_check: u16::from_be_bytes([f[u + 6], f[u + 7]]),
        udp: &f[u..(u + udp_len).min(f.len())],
        dns: &f[u + 8..(u + udp_len).min(f.len())],
    }
}

/// The UDP checksum over IPv6 as a receiver verifies it: the sum over the
/// pseudo-header and the datagram (checksum field included) must be 0xffff.
pub fn udp6_checksum_ok(p: &Parts) -> bool {
    let mut s = ones_sum(&p.l3[8..40]);
    s += p.udp_len as u32 + 17;
    s += ones_sum(p.udp);
    fold(s) == 0
}

/// Checks that `reply` is `query` turned around as an answer: MACs, IP
/// addresses and ports swapped, VLAN tags kept, IP and UDP lengths and
/// checksums right (IPv4: header checksum, UDP 0; IPv6: UDP checksum), and
/// the frame trimmed to exactly the datagram.
pub fn assert_turned_around(query: &[u8], reply: &[u8], ctx: &str) {
    let (qp, rp) = (parse(query), parse(reply));
    assert_eq!(rp.eth_dst, qp.eth_src, "{ctx}");
    assert_eq!(rp.eth_src, qp.eth_dst, "{ctx}");
    assert_eq!(rp.vlan_tags, qp.vlan_tags, "{ctx}");
    assert_eq!((rp.sport, rp.dport), (qp.dport, qp.sport), "{ctx}");
    match rp.ip {
        Ip::V4 => {
            assert_eq!(&rp.l3[12..16], &qp.l3[16..20], "{ctx}");
            assert_eq!(&rp.l3[16..20], &qp.l3[12..16], "{ctx}");
            let tot = u16::from_be_bytes([rp.l3[2], rp.l3[3]]) as usize;
            assert_eq!(tot, 20 + rp.udp_len, "{ctx}: IPv4 total length");
            assert_eq!(ipv4_checksum(rp.l3), 0, "{ctx}: IPv4 header checksum");
            assert_eq!(rp.udp_check, 0, "{ctx}: IPv4 UDP checksum must be 0");
        }
        Ip::V6 => {
            assert_eq!(&rp.l3[8..24], &qp.l3[24..40], "{ctx}");
            assert_eq!(&rp.l3[24..40], &qp.l3[8..24], "{ctx}");
            let pl = u16::from_be_bytes([rp.l3[4], rp.l3[5]]) as usize;
            assert_eq!(pl, rp.udp_len, "{ctx}: IPv6 payload length");
            assert_ne!(rp.udp_check, 0, "{ctx}: IPv6 UDP checksum is mandatory");
            assert!(udp6_checksum_ok(&rp), "{ctx}: IPv6 UDP checksum");
        }
    }
    let l2 = 14 + 4 * qp.vlan_tags.len();
    assert_eq!(
        reply.len(),
        l2 + rp.l3.len() + rp.udp_len,
        "{ctx}: frame trimmed"
    );
}

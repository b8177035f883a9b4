//! Test frames: a DNS message wrapped in UDP, IP and Ethernet, as the XDP
//! program receives it. `dnsfast explain` builds one to ask the loaded
//! program through `BPF_PROG_TEST_RUN`; the kernel tests and the bench
//! build theirs with the same code.

use std::net::IpAddr;

/// How to wrap a DNS message into a frame.
#[derive(Clone, Debug)]
pub struct Wrap {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// TPIDs of VLAN tags (VLAN 42), outermost first (0x88a8, 0x8100).
    pub vlans: Vec<u16>,
    /// Source and destination, of one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The UDP checksum field as sent (0 is legal over IPv4; the tests
    /// put a wrong one there to prove the program never reuses it).
    pub udp_check: u16,
}

impl Wrap {
    /// Wraps `dns` in UDP, IP (IPv4 header checksummed) and Ethernet.
    pub fn frame(&self, dns: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(dns.len() + 80);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for tpid in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]); // VLAN 42
        }
        let udp_len = (8 + dns.len()) as u16;
        match (self.src, self.dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&udp_len.to_be_bytes());
                f.extend_from_slice(&[17, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (s, d) => {
                let v4 = |a: IpAddr| match a {
                    IpAddr::V4(a) => a.octets(),
                    IpAddr::V6(_) => [0; 4],
                };
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0x45, 0, 0, 0, 0xab, 0xcd, 0x40, 0, 64, 17, 0, 0];
                ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
                ip.extend_from_slice(&v4(s));
                ip.extend_from_slice(&v4(d));
                let c = ipv4_checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
        }
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&self.udp_check.to_be_bytes());
        f.extend_from_slice(dns);
        f
    }
}

/// The ones'-complement sum of `data` as 16-bit words (odd tail padded).
pub fn ones_sum(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// A ones'-complement sum folded to 16 bits and inverted.
pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The IPv4 header checksum of `hdr` (its checksum field zero).
pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    fold(ones_sum(hdr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_frames_carry_a_valid_header_checksum() {
        let w = Wrap {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            vlans: vec![],
            src: "192.0.2.1".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            sport: 40000,
            dport: 53,
            udp_check: 0,
        };
        let f = w.frame(&[0; 12]);
        assert_eq!(f.len(), 14 + 20 + 8 + 12);
        assert_eq!(fold(ones_sum(&f[14..34])), 0);
        let mut v = w.clone();
        v.vlans = vec![0x8100];
        v.src = "fd00::2".parse().unwrap();
        v.dst = "fd00::1".parse().unwrap();
        assert_eq!(v.frame(&[0; 12]).len(), 14 + 4 + 40 + 8 + 12);
    }
}

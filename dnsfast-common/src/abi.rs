//! Map layouts, limits and constants. `#[repr(C)]` everywhere: these bytes
//! cross the user/kernel boundary and are dumped by `bpftool` through BTF.

/// Longest wire-format name, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_WIRE: usize = 255;
/// Longest label.
pub const MAX_LABEL: usize = 63;
/// Bytes of name data in a pattern key: a name without its root byte is at
/// most 254 bytes; 256 keeps the key a round size.
pub const KEY_DATA_LEN: usize = 256;
/// How many DNS ports the XDP program watches.
pub const MAX_PORTS: usize = 4;
pub const DEFAULT_DNS_PORT: u16 = 53;
/// Default capacity of the pattern trie.
pub const DEFAULT_MAX_PATTERNS: u32 = 131_072;
/// Capacity of the destination-address filter.
pub const MAX_SERVER_ADDRS: u32 = 64;

/// Map names as compiled into the object (also the pin file names).
pub const MAP_PATTERNS: &str = "PATTERNS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_SERVER_ADDRS: &str = "SERVER_ADDRS";
pub const MAP_SCRATCH: &str = "SCRATCH";
pub const MAP_ANSWERS: &str = "ANSWERS";
pub const MAP_JUMPS: &str = "JUMPS";
pub const MAP_LISTEN_ADDRS: &str = "LISTEN_ADDRS";
pub const MAP_TLDS: &str = "TLDS";
/// Capacity of the TLD set (the ICANN list has about 1,450).
pub const MAX_TLDS: u32 = 4096;
/// Forwarder listen addresses the answer cache serves, at most.
pub const MAX_LISTEN_ADDRS: u32 = 64;
/// Program name in the object.
pub const PROG_NAME: &str = "dnsfast_xdp";
/// An empty XDP program in the same object, for the bench's baseline.
pub const FLOOR_PROG_NAME: &str = "dnsfast_floor";
/// The answer-cache program, tail-called by the main one from `JUMPS[0]`.
pub const CACHE_PROG_NAME: &str = "dnsfast_cache";
/// Read-only global: when non-zero the program treats every DNS message on a
/// DNS port as a query (QR ignored). Only `cargo xtask bench` sets it, so that
/// `BPF_PROG_TEST_RUN`'s repeats, which rerun on the rewritten buffer, keep
/// taking the answer path. The verifier removes the branch when it is 0.
pub const GLOBAL_BENCH_MODE: &str = "DNSFAST_BENCH_MODE";

/// Where `dnsfast load` pins its maps.
pub const PIN_DIR: &str = "/sys/fs/bpf/dnsfast";

/// What a pattern does to the names at and below it.
pub const ACTION_BLOCK: u32 = 1;
pub const ACTION_ALLOW: u32 = 2;
/// A search suffix S: a name Q.S is blocked when Q's last label is in the
/// `TLDS` set (Q already looks fully qualified, so Q.S is a search-path
/// artifact); otherwise it passes.
pub const ACTION_SUFFIX: u32 = 3;

/// Value of the pattern trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `ACTION_BLOCK`, `ACTION_ALLOW` or `ACTION_SUFFIX`.
    pub action: u32,
    /// Length of the pattern's key in bytes, so a verdict can name its rule.
    pub key_len: u32,
}

/// Runtime settings of the XDP program (one element of an array map, so the
/// agent can change them while traffic flows).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP destination ports treated as DNS; 0 marks an unused slot.
    pub ports: [u16; MAX_PORTS],
    /// Non-zero: answer only queries whose destination is in `SERVER_ADDRS`.
    pub filter_dst: u32,
    pub _pad: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ports: [DEFAULT_DNS_PORT, 0, 0, 0],
            filter_dst: 0,
            _pad: 0,
        }
    }
}

pub const FAMILY_V4: u32 = 4;
pub const FAMILY_V6: u32 = 6;

/// Key of the destination-address filter. IPv4 uses the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub family: u32,
    pub addr: [u8; 16],
}

/// Per-CPU counters, one per outcome. Every packet the program sees lands in
/// `packets` and in exactly one of the `answered`/`pass_*` outcomes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every packet the program ran on.
    pub packets: u64,
    /// UDP packets to a DNS port that carry a DNS query header.
    pub dns_queries: u64,
    /// Queries answered NXDOMAIN in place (XDP_TX).
    pub answered_nxdomain: u64,
    /// Not IP/UDP, not to a DNS port or server address, or not a query.
    pub pass_not_dns: u64,
    /// Truncated, bad label, compression pointer, name too long, bad lengths.
    pub pass_malformed: u64,
    /// Valid but outside what the kernel answers: IP options or fragments,
    /// IPv6 extension headers, opcode, section counts, class, EDNS version.
    pub pass_unsupported: u64,
    /// A well-formed query whose name matches no pattern.
    pub pass_no_match: u64,
    /// A query whose longest matching pattern is an allow pattern.
    pub pass_allowed: u64,
    /// Queries answered in place from the answer cache (XDP_TX).
    pub answered_cache: u64,
}

impl Counters {
    /// Sum of per-CPU values.
    pub fn sum<'a>(it: impl IntoIterator<Item = &'a Counters>) -> Counters {
        let mut s = Counters::default();
        for c in it {
            s.packets += c.packets;
            s.dns_queries += c.dns_queries;
            s.answered_nxdomain += c.answered_nxdomain;
            s.pass_not_dns += c.pass_not_dns;
            s.pass_malformed += c.pass_malformed;
            s.pass_unsupported += c.pass_unsupported;
            s.pass_no_match += c.pass_no_match;
            s.pass_allowed += c.pass_allowed;
            s.answered_cache += c.answered_cache;
        }
        s
    }
}

/// Per-CPU scratch where the program builds the lookup key (see
/// [`crate::name`]). A map value, not the stack: a large stack key makes
/// verification cost swing by an order of magnitude.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub buf: [u8; crate::name::SCRATCH_LEN + crate::name::SLACK],
    /// Wire offsets of the labels of the name being encoded.
    pub labels: [u8; crate::name::MAX_LABELS],
    /// Values parked here and read back volatile so the verifier merges the
    /// many loop exits into one state instead of re-walking per exit.
    pub name_len: u32,
    pub nlabels: u32,
    pub key_start: u32,
    /// How many wire bytes were copied to the scratch buffer.
    pub wire_len: u32,
    /// IPv6 UDP checksum: bytes to sum, and the running sum.
    pub csum_len: u32,
    pub csum_acc: u32,
    /// The packet's layer offsets (L3, L4, DNS end, is-IPv6), laundered.
    pub hdr: [u32; 4],
    /// What the cache program needs to know of the query (`answer::cq`).
    pub cq: [u32; 8],
}

impl Scratch {
    pub const fn zeroed() -> Self {
        Self {
            buf: [0; crate::name::SCRATCH_LEN + crate::name::SLACK],
            labels: [0; crate::name::MAX_LABELS],
            name_len: 0,
            nlabels: 0,
            key_start: 0,
            wire_len: 0,
            csum_len: 0,
            csum_acc: 0,
            hdr: [0; 4],
            cq: [0; 8],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and byte
    // arrays, and every bit pattern is valid.
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for crate::answer::AnswerKey {}
    unsafe impl aya::Pod for crate::answer::ListenKey {}
    unsafe impl aya::Pod for crate::name::TldKey {}
    unsafe impl aya::Pod for crate::answer::CachedAnswer {}
}

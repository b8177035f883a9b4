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
/// Default capacity of the pattern table (16.8 MB of preallocated buckets).
pub const DEFAULT_MAX_PATTERNS: u32 = 131_072;
/// Largest capacity `xdp.max-patterns` accepts: 512 MB of buckets, which
/// the kernel allocates up front (128 bytes per pattern).
pub const MAX_MAX_PATTERNS: u32 = 4_194_304;
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
/// One `u64`: the CLOCK_MONOTONIC time (ns) until which the agent vouches
/// for what it keeps fresh (cached answers, the Kubernetes API's
/// verdicts). The agent renews it every second; without an agent (a
/// crash, `--keep-attached`) it runs out and the program passes those
/// queries up instead of answering from stale knowledge.
pub const MAP_LEASE: &str = "LEASE";

/// The version of the maps' layout (keys, values, their meaning). Bumped
/// with every change to one of them; kept in the CONFIG map
/// (`XdpConfig::layout`), so that a newer or older agent never reads maps
/// it would misread.
pub const MAP_LAYOUT: u32 = 3;
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
/// Emits query events for `dnsfast watch`; in the jump table only while
/// someone watches.
pub const WATCH_PROG_NAME: &str = "dnsfast_watch";
/// Slots of the `JUMPS` program array.
pub const JUMP_CACHE: u32 = 0;
pub const JUMP_WATCH: u32 = 1;
pub const MAP_EVENTS: &str = "EVENTS";
pub const MAP_WATCH_STATE: &str = "WATCH_STATE";
/// Ring buffer size for watch events (a power of two, in bytes): a
/// second of events at the rate limit, on a few CPUs.
pub const EVENTS_RING_BYTES: usize = 1024 * 1024;
/// Watch events per second and CPU at most; past it they are counted as
/// dropped, so a flood costs the node nothing more.
pub const WATCH_EVENTS_PER_SEC: u32 = 2000;

/// Verdicts of a watch event.
pub const VERDICT_NXDOMAIN: u32 = 1;
pub const VERDICT_CACHE: u32 = 2;
pub const VERDICT_PASS: u32 = 3;
pub const VERDICT_ALLOWED: u32 = 4;
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
/// Kernel only: a search suffix P whose namespace suffixes `<L>.P` were
/// folded into the `NAMESPACES` set (one table entry instead of one per
/// namespace; see the agent's `maps::fold_namespaces`). A name under P
/// whose next label is in the set is judged against `<L>.P`.
pub const ACTION_SUFFIX_NS: u32 = 4;
/// A name that exists, from the Kubernetes API (the cluster domain's
/// apex): the name itself passes, and a name below it that no longer rule
/// covers does not exist, so it is answered NXDOMAIN.
pub const ACTION_EXISTS: u32 = 5;
/// The same, where CoreDNS also answers a wildcard (`*` or `any`) in the
/// next label for whatever exists (`svc.<cd>`: a namespace wildcard;
/// `<ns>.svc.<cd>`: a Service wildcard): a name whose label just below is
/// one passes too.
pub const ACTION_EXISTS_WILD: u32 = 6;

/// The first 8 key bytes (length byte and text, zero padded) of the two
/// wildcard labels CoreDNS answers in a namespace's or a service's place.
pub const WILDCARD_STAR: u64 = u64::from_le_bytes([1, b'*', 0, 0, 0, 0, 0, 0]);
pub const WILDCARD_ANY: u64 = u64::from_le_bytes([3, b'a', b'n', b'y', 0, 0, 0, 0]);

/// Whether a label is a CoreDNS wildcard (`*`, `any`; lower-cased).
pub const fn is_wildcard(label: &[u8]) -> bool {
    matches!(label, [b'*'] | [b'a', b'n', b'y'])
}
pub const MAP_NAMESPACES: &str = "NAMESPACES";
/// Capacity of the namespace set.
pub const MAX_NAMESPACES: u32 = 16_384;

/// A pattern's rule, as the pattern table stores it.
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
pub struct XdpConfig {
    /// UDP destination ports treated as DNS; 0 marks an unused slot.
    pub ports: [u16; MAX_PORTS],
    /// Non-zero: answer only queries whose destination is in `SERVER_ADDRS`.
    pub filter_dst: u32,
    /// `MAP_LAYOUT` of the agent that wrote it: read back from the pinned
    /// CONFIG by the next agent and the CLI (a map whose value size
    /// differs is an older layout too).
    pub layout: u32,
    /// The per-client rate bound on queries passed up to the forwarder
    /// (GCRA): one query per `client_interval_ns`, with bursts of up to
    /// `client_burst_ns / client_interval_ns` queries. 0: no bound.
    pub client_interval_ns: u64,
    pub client_burst_ns: u64,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            ports: [DEFAULT_DNS_PORT, 0, 0, 0],
            filter_dst: 0,
            layout: MAP_LAYOUT,
            client_interval_ns: 0,
            client_burst_ns: 0,
        }
    }
}

/// Clients the rate bound tracks at once (an LRU: the least recently
/// seen is forgotten first, and starts again with a full burst).
pub const MAX_RATE_CLIENTS: u32 = 65_536;

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
/// `packets` and in exactly one of the `answered`/`pass_*`/`dropped_*`
/// outcomes.
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
    /// Queries for the forwarder dropped (XDP_DROP) because their client
    /// sent more than `xdp.client-qps` of them.
    pub dropped_rate_limited: u64,
    /// Not a count: the verdict and action of this CPU's last decided
    /// query (`VERDICT_* | action << 8`), for the watch program.
    pub last: u64,
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
            s.dropped_rate_limited += c.dropped_rate_limited;
        }
        s
    }

    /// Every field by its name (the BTF name bpftool shows), for `stats`
    /// and `/metrics`.
    pub fn fields(&self) -> [(&'static str, u64); 10] {
        [
            ("packets", self.packets),
            ("dns_queries", self.dns_queries),
            ("answered_nxdomain", self.answered_nxdomain),
            ("answered_cache", self.answered_cache),
            ("pass_not_dns", self.pass_not_dns),
            ("pass_malformed", self.pass_malformed),
            ("pass_unsupported", self.pass_unsupported),
            ("pass_no_match", self.pass_no_match),
            ("pass_allowed", self.pass_allowed),
            ("dropped_rate_limited", self.dropped_rate_limited),
        ]
    }
}

/// One query as `dnsfast watch` shows it, written by the watch program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WatchEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The client: source of the query (destination of an answer).
    pub addr: [u8; 16],
    pub family: u32,
    pub qtype: u32,
    /// `VERDICT_*`.
    pub verdict: u32,
    /// The deciding rule: its key length in bytes (0: none) and action.
    pub rule_len: u32,
    pub rule_action: u32,
    /// Bytes of `name` that are the wire name, root byte included.
    pub name_len: u32,
    /// The question name in wire form, the client's case kept.
    pub name: [u8; 256],
}

#[cfg(feature = "user")]
impl WatchEvent {
    /// Decodes a ring buffer record (native byte order, the layout above).
    pub fn from_bytes(b: &[u8]) -> Option<WatchEvent> {
        if b.len() < core::mem::size_of::<WatchEvent>() {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
        let mut e = WatchEvent {
            time_ns: u64::from_ne_bytes(b[0..8].try_into().ok()?),
            addr: b[8..24].try_into().ok()?,
            family: u32_at(24),
            qtype: u32_at(28),
            verdict: u32_at(32),
            rule_len: u32_at(36),
            rule_action: u32_at(40),
            name_len: u32_at(44),
            name: [0; 256],
        };
        e.name.copy_from_slice(&b[48..48 + 256]);
        Some(e)
    }
}

/// Per-CPU rate limit and tallies of the watch program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchState {
    pub window_start_ns: u64,
    pub in_window: u64,
    pub sent: u64,
    /// Over the rate limit, or the ring was full.
    pub dropped: u64,
}

/// Per-CPU scratch where the program builds the lookup key (see
/// [`crate::name`]). A map value, not the stack: a large stack key makes
/// verification cost swing by an order of magnitude.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    pub buf: [u8; crate::name::SCRATCH_LEN + crate::name::SLACK],
    /// Values parked here and read back volatile so the verifier merges the
    /// many loop exits into one state instead of re-walking per exit.
    pub name_len: u32,
    pub nlabels: u32,
    pub key_start: u32,
    /// IPv6 UDP checksum: bytes to sum, and the running sum.
    pub csum_len: u32,
    pub csum_acc: u32,
    /// The packet's layer offsets (L3, L4, DNS end, is-IPv6), laundered.
    pub hdr: [u32; 4],
    /// What the cache program needs to know of the query (`answer::cq`).
    pub cq: [u32; 8],
    /// Per label of the name being encoded, in wire order: its hash
    /// (`table::label_hash`) and wire offset.
    pub label_hash: [u64; crate::name::MAX_LABELS],
    pub label_pos: [u8; crate::name::MAX_LABELS],
    /// The pattern lookup's suffix states, by label count, and the slot it
    /// found (action, key length, bucket, slot).
    pub suffix: [u64; crate::name::MAX_LABELS],
    pub found: [u32; 4],
}

impl Scratch {
    pub const fn zeroed() -> Self {
        Self {
            buf: [0; crate::name::SCRATCH_LEN + crate::name::SLACK],
            name_len: 0,
            nlabels: 0,
            key_start: 0,
            csum_len: 0,
            csum_acc: 0,
            label_hash: [0; crate::name::MAX_LABELS],
            label_pos: [0; crate::name::MAX_LABELS],
            suffix: [0; crate::name::MAX_LABELS],
            found: [0; 4],
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
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for crate::answer::AnswerKey {}
    unsafe impl aya::Pod for crate::answer::ListenKey {}
    unsafe impl aya::Pod for crate::name::TldKey {}
    unsafe impl aya::Pod for crate::answer::CachedAnswer {}
    unsafe impl aya::Pod for super::WatchState {}
    unsafe impl aya::Pod for crate::labels::LabelBucket {}
    unsafe impl aya::Pod for crate::table::Bucket {}
    unsafe impl aya::Pod for crate::table::Depths {}
    unsafe impl aya::Pod for crate::table::LongKey {}
}

#[cfg(all(test, feature = "user"))]
mod watch_tests {
    use super::*;

    #[test]
    fn watch_events_decode_from_their_bytes() {
        assert_eq!(core::mem::size_of::<WatchEvent>(), 48 + 256);
        let mut b = vec![0u8; core::mem::size_of::<WatchEvent>()];
        b[0..8].copy_from_slice(&42u64.to_ne_bytes());
        b[8..12].copy_from_slice(&[10, 0, 0, 2]);
        b[24..28].copy_from_slice(&FAMILY_V4.to_ne_bytes());
        b[28..32].copy_from_slice(&28u32.to_ne_bytes());
        b[32..36].copy_from_slice(&VERDICT_NXDOMAIN.to_ne_bytes());
        b[44..48].copy_from_slice(&5u32.to_ne_bytes());
        b[48..53].copy_from_slice(b"\x03com\x00");
        let e = WatchEvent::from_bytes(&b).unwrap();
        assert_eq!(
            (e.time_ns, e.family, e.qtype, e.verdict, e.name_len),
            (42, FAMILY_V4, 28, VERDICT_NXDOMAIN, 5)
        );
        assert_eq!(&e.addr[..4], &[10, 0, 0, 2]);
        assert_eq!(&e.name[..5], b"\x03com\x00");
        assert!(WatchEvent::from_bytes(&b[..100]).is_none());
    }
}

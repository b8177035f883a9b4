//! Forwarder settings: the `[forward]`, `[cache]` and `[[zone]]` tables of
//! the config file, validated, plus the default zone from resolv.conf.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use dnsfast_common::pattern::Pattern;
use serde::Deserialize;
use toml::Spanned;

use super::patterns::Origin;

pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:53";
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_CACHE_SIZE: usize = 10_000;
pub(crate) const DEFAULT_MAX_TTL: u32 = 86_400;
pub(crate) const DEFAULT_NEG_TTL: u32 = 60;
pub(crate) const DEFAULT_MAX_INFLIGHT: usize = 4096;
/// The largest answer sent over UDP whatever size a client's EDNS offers
/// (DNS Flag Day 2020: no fragments); larger ones go out with TC, and the
/// client asks again over TCP.
pub(crate) const DEFAULT_MAX_UDP_SIZE: usize = 1232;
pub(crate) const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// One client address may hold this many of `max-inflight`, so that one
/// pod asking for names that never resolve cannot take every slot.
pub(crate) const DEFAULT_MAX_INFLIGHT_PER_CLIENT: usize = 128;
/// The cache's answers in bytes (keys and bookkeeping included).
pub(crate) const DEFAULT_CACHE_MAX_BYTES: u64 = 32 << 20;
/// An answer larger than this is served but not kept.
pub(crate) const DEFAULT_CACHE_MAX_ENTRY_BYTES: usize = 16 << 10;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawForward {
    listen: Option<Vec<Spanned<String>>>,
    workers: Option<Spanned<usize>>,
    timeout_ms: Option<Spanned<u64>>,
    max_inflight: Option<Spanned<usize>>,
    max_udp_size: Option<Spanned<usize>>,
    max_inflight_per_client: Option<Spanned<usize>>,
    tcp_max_connections: Option<Spanned<usize>>,
    tcp_max_per_client: Option<Spanned<usize>>,
    tcp_pipeline: Option<Spanned<usize>>,
    tcp_idle_ms: Option<Spanned<u64>>,
    tcp_write_timeout_ms: Option<Spanned<u64>>,
    tcp_buffer_bytes: Option<Spanned<usize>>,
    log_queries: Option<bool>,
    no_resolv: Option<bool>,
    resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawCache {
    size: Option<usize>,
    max_bytes: Option<Spanned<u64>>,
    max_entry_bytes: Option<Spanned<usize>>,
    min_ttl: Option<Spanned<u32>>,
    max_ttl: Option<Spanned<u32>>,
    neg_cache: Option<bool>,
    neg_ttl: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawZone {
    name: Spanned<String>,
    upstreams: Vec<Spanned<RawUpstream>>,
    policy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUpstream {
    Addr(String),
    Table {
        addr: String,
        #[serde(rename = "timeout-ms")]
        timeout_ms: Option<u64>,
    },
}

/// How a zone spreads queries over its upstreams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// The first healthy upstream; the next one only when it fails.
    Sequential,
    /// A random healthy upstream first, then the others in random order.
    Random,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UpstreamSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ZoneSpec {
    /// Canonical zone name; `.` is the default zone.
    pub(crate) name: String,
    pub(crate) upstreams: Vec<UpstreamSpec>,
    pub(crate) policy: Policy,
    /// dnsmasq's `--server=/zone/#`: this zone uses the default upstreams.
    pub(crate) use_default: bool,
    pub(crate) origin: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Entries at most; 0 turns the cache off.
    pub(crate) size: usize,
    /// Bytes at most, whatever the number of entries.
    pub(crate) max_bytes: u64,
    /// Answers larger than this are not kept.
    pub(crate) max_entry_bytes: usize,
    pub(crate) min_ttl: u32,
    pub(crate) max_ttl: u32,
    /// Cache NXDOMAIN and NODATA (off by default, as kube-dns ran dnsmasq
    /// with `--no-negcache`).
    pub(crate) neg_cache: bool,
    pub(crate) neg_ttl: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            size: DEFAULT_CACHE_SIZE,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            max_entry_bytes: DEFAULT_CACHE_MAX_ENTRY_BYTES,
            min_ttl: 0,
            max_ttl: DEFAULT_MAX_TTL,
            neg_cache: false,
            neg_ttl: DEFAULT_NEG_TTL,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ForwardSettings {
    pub(crate) listen: Vec<SocketAddr>,
    /// UDP sockets (SO_REUSEPORT) and runtime threads; 0 = one per CPU.
    pub(crate) workers: usize,
    pub(crate) timeout: Duration,
    pub(crate) max_inflight: usize,
    /// The largest UDP answer, whatever the client's EDNS size.
    pub(crate) max_udp_size: usize,
    /// Upstream queries one client address may have in flight.
    pub(crate) max_inflight_per_client: usize,
    pub(crate) tcp: TcpSettings,
    pub(crate) log_queries: bool,
    pub(crate) no_resolv: bool,
    pub(crate) resolv_conf: PathBuf,
    pub(crate) cache: CacheSettings,
    pub(crate) zones: Vec<ZoneSpec>,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self {
            listen: vec![DEFAULT_LISTEN.parse().expect("a valid address")],
            workers: 0,
            timeout: DEFAULT_TIMEOUT,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_udp_size: DEFAULT_MAX_UDP_SIZE,
            max_inflight_per_client: DEFAULT_MAX_INFLIGHT_PER_CLIENT,
            tcp: TcpSettings::default(),
            log_queries: false,
            no_resolv: false,
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            cache: CacheSettings::default(),
            zones: Vec::new(),
        }
    }
}

/// What one TCP client may hold. A connection costs at most
/// `pipeline` queries in flight and its share of `buffer_bytes` of
/// answers waiting to be read; every wait on the client is bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TcpSettings {
    /// Open connections in all; past it a new one is closed at once.
    pub(crate) max_connections: usize,
    /// Open connections from one client address.
    pub(crate) max_per_client: usize,
    /// Queries one connection may have unanswered; past it the
    /// connection is not read until one is written.
    pub(crate) pipeline: usize,
    /// A connection with nothing to do, or a message that takes longer
    /// than this to arrive (one byte a second), is closed.
    pub(crate) idle: Duration,
    /// A client that does not take an answer in this long loses its
    /// connection, and only its own.
    pub(crate) write_timeout: Duration,
    /// Bytes of answers waiting for TCP clients to read them, in all.
    pub(crate) buffer_bytes: usize,
}

impl Default for TcpSettings {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_per_client: 16,
            pipeline: 16,
            idle: Duration::from_secs(10),
            write_timeout: Duration::from_secs(3),
            buffer_bytes: 8 << 20,
        }
    }
}

/// A setting from the file, checked against its range: `key` names it in
/// the error, which points at its line.
fn within<T: Copy + PartialOrd + std::fmt::Display>(
    v: Option<Spanned<T>>,
    key: &str,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
    at: &dyn Fn(std::ops::Range<usize>) -> Origin,
) -> Result<Option<T>> {
    let Some(v) = v else { return Ok(None) };
    if !range.contains(v.get_ref()) {
        bail!(
            "{}: {key} = {}: give {} to {} {unit}",
            at(v.span()),
            v.get_ref(),
            range.start(),
            range.end()
        );
    }
    Ok(Some(v.into_inner()))
}

/// `1.2.3.4`, `1.2.3.4#5353` (dnsmasq), `1.2.3.4:5353`, `fd00::1`,
/// `fd00::1#5353` or `[fd00::1]:5353`. The port defaults to 53.
pub(crate) fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Some((ip, port)) = t.split_once('#') {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("'{ip}' is not an IP address"))?;
        let port = parse_port(port)?;
        return Ok(SocketAddr::new(ip, port));
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    match t.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        Ok(_) => Err(format!("'{t}': port 0 is not a DNS server's port")),
        Err(_) => Err(format!(
            "'{t}' is not an upstream address (IP, IP#PORT, IP:PORT or [IPv6]:PORT)"
        )),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{p}' is not a port (1-65535)")),
        Ok(n) => Ok(n),
    }
}

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, or a bare IP for port 53.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    t.parse::<SocketAddr>()
        .map_err(|_| format!("'{t}' is not a listen address (IP, IP:PORT or [IPv6]:PORT)"))
}

/// Canonical zone name: lower case without the trailing dot; `.` for the root.
pub(crate) fn parse_zone(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t == "." || t.is_empty() {
        return Ok(".".into());
    }
    Pattern::parse(t)
        .map(|p| p.name)
        .map_err(|e| format!("zone '{t}': {e}"))
}

impl ForwardSettings {
    /// Validates the raw tables; `at` maps a byte span to its file:line.
    pub(crate) fn from_raw(
        f: RawForward,
        c: RawCache,
        zones: Vec<RawZone>,
        at: &dyn Fn(std::ops::Range<usize>) -> Origin,
    ) -> Result<Self> {
        let mut s = ForwardSettings::default();
        if let Some(list) = f.listen {
            s.listen.clear();
            for l in list {
                let a = parse_listen(l.get_ref())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at(l.span())))?;
                s.listen.push(a);
            }
        }
        if let Some(w) = f.workers {
            if *w.get_ref() > 256 {
                bail!("{}: forward.workers is at most 256", at(w.span()));
            }
            s.workers = w.into_inner();
        }
        if let Some(t) = f.timeout_ms {
            s.timeout =
                timeout(*t.get_ref()).map_err(|e| anyhow::anyhow!("{}: {e}", at(t.span())))?;
        }
        if let Some(m) = f.max_inflight {
            if *m.get_ref() == 0 {
                bail!("{}: forward.max-inflight must be at least 1", at(m.span()));
            }
            s.max_inflight = m.into_inner();
        }
        if let Some(m) = f.max_udp_size {
            if !(512..=65_535).contains(m.get_ref()) {
                bail!(
                    "{}: forward.max-udp-size {}: give 512 to 65535 bytes",
                    at(m.span()),
                    m.get_ref()
                );
            }
            s.max_udp_size = m.into_inner();
        }
        let per_client = "forward.max-inflight-per-client";
        if let Some(n) = within(
            f.max_inflight_per_client,
            per_client,
            1..=1 << 20,
            "queries",
            at,
        )? {
            s.max_inflight_per_client = n;
        }
        let t = &mut s.tcp;
        let ms = Duration::from_millis;
        let conns = "connections";
        let mc = "forward.tcp-max-connections";
        if let Some(n) = within(f.tcp_max_connections, mc, 1..=65_536, conns, at)? {
            t.max_connections = n;
        }
        let mpc = "forward.tcp-max-per-client";
        if let Some(n) = within(f.tcp_max_per_client, mpc, 1..=65_536, conns, at)? {
            t.max_per_client = n;
        }
        if let Some(n) = within(
            f.tcp_pipeline,
            "forward.tcp-pipeline",
            1..=1024,
            "queries",
            at,
        )? {
            t.pipeline = n;
        }
        if let Some(n) = within(
            f.tcp_idle_ms,
            "forward.tcp-idle-ms",
            100..=600_000,
            "ms",
            at,
        )? {
            t.idle = ms(n);
        }
        let wt = "forward.tcp-write-timeout-ms";
        if let Some(n) = within(f.tcp_write_timeout_ms, wt, 100..=600_000, "ms", at)? {
            t.write_timeout = ms(n);
        }
        let tb = "forward.tcp-buffer-bytes";
        if let Some(n) = within(f.tcp_buffer_bytes, tb, 65_536..=1 << 32, "bytes", at)? {
            t.buffer_bytes = n;
        }
        s.log_queries = f.log_queries.unwrap_or(false);
        s.no_resolv = f.no_resolv.unwrap_or(false);
        if let Some(p) = f.resolv_conf {
            s.resolv_conf = p;
        }
        let d = CacheSettings::default();
        let mb = "cache.max-bytes";
        let max_bytes = within(c.max_bytes, mb, 65_536..=1 << 40, "bytes", at)?;
        let meb = "cache.max-entry-bytes";
        let max_entry_bytes = within(c.max_entry_bytes, meb, 512..=65_535, "bytes", at)?;
        s.cache = CacheSettings {
            size: c.size.unwrap_or(d.size),
            max_bytes: max_bytes.unwrap_or(d.max_bytes),
            max_entry_bytes: max_entry_bytes.unwrap_or(d.max_entry_bytes),
            min_ttl: c
                .min_ttl
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(d.min_ttl),
            max_ttl: c
                .max_ttl
                .as_ref()
                .map(|m| *m.get_ref())
                .unwrap_or(d.max_ttl),
            neg_cache: c.neg_cache.unwrap_or(d.neg_cache),
            neg_ttl: c.neg_ttl.unwrap_or(d.neg_ttl),
        };
        if s.cache.max_ttl < s.cache.min_ttl {
            // Point at whichever of the two the file set (max-ttl first).
            let span = c.max_ttl.map(|m| m.span()).or(c.min_ttl.map(|m| m.span()));
            let where_ = span.map(|sp| at(sp).to_string()).unwrap_or_default();
            bail!(
                "{where_}: cache.max-ttl ({}) is below cache.min-ttl ({})",
                s.cache.max_ttl,
                s.cache.min_ttl
            );
        }
        for z in zones {
            let origin = at(z.name.span());
            let name =
                parse_zone(z.name.get_ref()).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            let policy = match z.policy.as_ref().map(|p| p.get_ref().as_str()) {
                None | Some("sequential") => Policy::Sequential,
                Some("random") => Policy::Random,
                Some(other) => bail!(
                    "{}: zone '{name}': policy '{other}' is not one of sequential, random",
                    at(z.policy.as_ref().map(|p| p.span()).unwrap_or(z.name.span()))
                ),
            };
            if z.upstreams.is_empty() {
                bail!("{origin}: zone '{name}' has no upstreams");
            }
            let mut ups = Vec::new();
            for u in z.upstreams {
                let uo = at(u.span());
                let (addr, t) = match u.into_inner() {
                    RawUpstream::Addr(a) => (a, None),
                    RawUpstream::Table { addr, timeout_ms } => (addr, timeout_ms),
                };
                let addr = parse_upstream(&addr).map_err(|e| anyhow::anyhow!("{uo}: {e}"))?;
                let timeout = match t {
                    Some(ms) => timeout(ms).map_err(|e| anyhow::anyhow!("{uo}: {e}"))?,
                    None => s.timeout,
                };
                ups.push(UpstreamSpec { addr, timeout });
            }
            s.add_zone(ZoneSpec {
                name,
                upstreams: ups,
                policy,
                use_default: false,
                origin,
            })?;
        }
        Ok(s)
    }

    /// Adds a zone, or appends upstreams to one already named.
    pub(crate) fn add_zone(&mut self, z: ZoneSpec) -> Result<()> {
        if let Some(prev) = self.zones.iter_mut().find(|p| p.name == z.name) {
            if prev.use_default != z.use_default {
                bail!(
                    "{}: zone '{}' is sent to the default upstreams at {} and to its own here; pick one",
                    z.origin,
                    z.name,
                    prev.origin
                );
            }
            for u in z.upstreams {
                if !prev.upstreams.contains(&u) {
                    prev.upstreams.push(u);
                }
            }
            return Ok(());
        }
        self.zones.push(z);
        Ok(())
    }

    /// Listeners and UDP workers actually used.
    pub(crate) fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// The zones with the default zone completed from resolv.conf (unless
    /// `no-resolv`). Nameservers that are one of our own listen addresses
    /// are skipped: forwarding to ourselves would loop.
    pub(crate) fn resolved_zones(&self) -> Result<Vec<ZoneSpec>> {
        let mut zones = self.zones.clone();
        if self.no_resolv {
            return Ok(zones);
        }
        let servers = read_resolv_conf(&self.resolv_conf)?;
        let own = |a: &SocketAddr| {
            self.listen
                .iter()
                .any(|l| l.port() == a.port() && (l.ip() == a.ip() || l.ip().is_unspecified()))
        };
        let ups: Vec<UpstreamSpec> = servers
            .into_iter()
            .filter(|a| {
                let loops = own(a);
                if loops {
                    log::warn!(
                        "resolv.conf nameserver {a} is one of our listen addresses; skipped"
                    );
                }
                !loops
            })
            .map(|addr| UpstreamSpec {
                addr,
                timeout: self.timeout,
            })
            .collect();
        if ups.is_empty() {
            return Ok(zones);
        }
        let origin = Origin::File {
            path: self.resolv_conf.clone(),
            line: 0,
        };
        match zones.iter_mut().find(|z| z.name == ".") {
            Some(root) => {
                for u in ups {
                    if !root.upstreams.contains(&u) {
                        root.upstreams.push(u);
                    }
                }
            }
            None => zones.push(ZoneSpec {
                name: ".".into(),
                upstreams: ups,
                policy: Policy::Sequential,
                use_default: false,
                origin,
            }),
        }
        Ok(zones)
    }
}

fn timeout(ms: u64) -> Result<Duration, String> {
    if !(10..=60_000).contains(&ms) {
        return Err(format!("timeout-ms = {ms}: use 10 to 60000 milliseconds"));
    }
    Ok(Duration::from_millis(ms))
}

/// The `nameserver` lines of a resolv.conf.
pub(crate) fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} for the default upstreams (set no-resolv to do without)",
            path.display()
        )
    })?;
    Ok(parse_resolv_conf(&text))
}

pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("nameserver"), Some(ip)) => {
                    // A scoped IPv6 address (fe80::1%eth0) keeps only the IP.
                    let ip = ip.split('%').next().unwrap_or(ip);
                    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        let p = |s: &str| parse_upstream(s).unwrap().to_string();
        assert_eq!(p("10.0.0.1"), "10.0.0.1:53");
        assert_eq!(p("127.0.0.1#10053"), "127.0.0.1:10053");
        assert_eq!(p("127.0.0.1:10053"), "127.0.0.1:10053");
        assert_eq!(p("fd00::1"), "[fd00::1]:53");
        assert_eq!(p("fd00::1#5353"), "[fd00::1]:5353");
        assert_eq!(p("[fd00::1]:5353"), "[fd00::1]:5353");
        assert!(parse_upstream("10.0.0.1#0")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_upstream("10.0.0.1#x").is_err());
        assert!(parse_upstream("dns.google")
            .unwrap_err()
            .contains("not an upstream address"));
        assert!(parse_upstream("10.0.0.1:0").is_err());
    }

    #[test]
    fn resolv_conf_nameservers() {
        let t = "# c\nsearch a b\nnameserver 10.0.0.10\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        let v = parse_resolv_conf(t);
        assert_eq!(
            v,
            vec![
                "10.0.0.10:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn zone_names() {
        assert_eq!(parse_zone("Cluster.Local.").unwrap(), "cluster.local");
        assert_eq!(parse_zone(".").unwrap(), ".");
        assert!(parse_zone("a..b").unwrap_err().contains("empty label"));
    }

    #[test]
    fn own_listen_address_is_not_an_upstream() {
        let dir = std::env::temp_dir().join(format!("dnsfast-resolv-{}", std::process::id()));
        std::fs::write(&dir, "nameserver 127.0.0.1\nnameserver 10.0.0.10\n").unwrap();
        let s = ForwardSettings {
            resolv_conf: dir.clone(),
            ..Default::default()
        };
        let z = s.resolved_zones().unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(z.len(), 1);
        assert_eq!(z[0].name, ".");
        assert_eq!(z[0].upstreams.len(), 1);
        assert_eq!(z[0].upstreams[0].addr.to_string(), "10.0.0.10:53");
    }
}

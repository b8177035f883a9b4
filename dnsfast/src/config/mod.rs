//! The configuration: the TOML file's model (this module), the flags
//! that override it (`flags`, `dnsmasq`), the forwarder's tables
//! (`forward`), and auto mode's derived rules (`auto`). [`build`] turns a
//! file and flags into one validated [`Config`]; every error names the
//! file and line, or the flag. Uses nothing else of the crate.

pub mod auto;
pub(crate) mod dnsmasq;
pub(crate) mod flags;
pub mod forward;
pub mod kubernetes;
pub mod patterns;

use std::{net::IpAddr, path::Path};

use anyhow::{bail, Context, Result};
use dnsfast_common::{
    pattern::Action, DEFAULT_DNS_PORT, DEFAULT_MAX_PATTERNS, MAX_MAX_PATTERNS, MAX_PORTS,
    MAX_SERVER_ADDRS,
};
use serde::Deserialize;
use toml::Spanned;

use self::forward::{parse_listen, ForwardSettings};
pub use flags::{ForwardFlags, KubeFlags};
pub(crate) use patterns::Origin;
pub use patterns::PatternTable;

/// An example configuration, documented; `dnsfast load` without `--config`
/// uses the same defaults.
pub(crate) const EXAMPLE: &str = include_str!("../../../examples/dnsfast.toml");

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    xdp: RawXdp,
    #[serde(default)]
    patterns: RawPatterns,
    #[serde(default)]
    forward: forward::RawForward,
    #[serde(default)]
    cache: forward::RawCache,
    #[serde(default)]
    zone: Vec<forward::RawZone>,
    #[serde(default)]
    auto: auto::RawAuto,
    #[serde(default)]
    kubernetes: kubernetes::RawKubernetes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawXdp {
    ports: Option<Spanned<Vec<u16>>>,
    server_addrs: Option<Vec<Spanned<String>>>,
    max_patterns: Option<Spanned<u32>>,
    client_qps: Option<Spanned<u32>>,
    client_burst: Option<Spanned<u32>>,
}

/// A client address may send the forwarder this many queries a second
/// through the XDP program (what it answers itself is not counted); the
/// excess is dropped in the kernel, before it can fill the forwarder's
/// sockets. Far above what a pod asks (a busy one: hundreds a second).
pub(crate) const DEFAULT_CLIENT_QPS: u32 = 5000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatterns {
    #[serde(default)]
    block: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

/// Settings for the XDP data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct XdpSettings {
    pub(crate) ports: Vec<u16>,
    /// Empty: answer queries to any destination.
    pub(crate) server_addrs: Vec<IpAddr>,
    pub(crate) max_patterns: u32,
    /// Queries a second per client address to the forwarder; 0: no bound.
    pub(crate) client_qps: u32,
    /// Queries a client may send at once past its rate.
    pub(crate) client_burst: u32,
}

impl Default for XdpSettings {
    fn default() -> Self {
        Self {
            ports: vec![DEFAULT_DNS_PORT],
            server_addrs: Vec::new(),
            max_patterns: DEFAULT_MAX_PATTERNS,
            client_qps: DEFAULT_CLIENT_QPS,
            client_burst: DEFAULT_CLIENT_QPS,
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    pub(crate) xdp: XdpSettings,
    pub(crate) patterns: PatternTable,
    pub(crate) forward: ForwardSettings,
    pub(crate) auto: auto::AutoSettings,
    pub(crate) kubernetes: kubernetes::KubernetesSettings,
    /// What auto mode derived (filled by [`build`]).
    pub(crate) derived: Option<auto::Derived>,
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses `text`, reporting errors against `path`.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| line_of(text, s.start))
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            anyhow::anyhow!("{}{line}: {}", path.display(), e.message())
        })?;
        let at = |span: std::ops::Range<usize>| Origin::File {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
        };

        let mut xdp = XdpSettings::default();
        if let Some(ports) = raw.xdp.ports {
            let origin = at(ports.span());
            let ports = ports.into_inner();
            if ports.is_empty() || ports.len() > MAX_PORTS || ports.contains(&0) {
                bail!("{origin}: xdp.ports takes 1 to {MAX_PORTS} ports, none of them 0");
            }
            xdp.ports = ports;
        }
        for a in raw.xdp.server_addrs.unwrap_or_default() {
            let origin = at(a.span());
            let ip: IpAddr = a
                .get_ref()
                .parse()
                .map_err(|_| anyhow::anyhow!("{origin}: '{}' is not an IP address", a.get_ref()))?;
            xdp.server_addrs.push(ip);
        }
        if xdp.server_addrs.len() > MAX_SERVER_ADDRS as usize {
            bail!(
                "{}: xdp.server-addrs holds at most {MAX_SERVER_ADDRS} addresses",
                path.display()
            );
        }
        if let Some(m) = raw.xdp.max_patterns {
            if *m.get_ref() == 0 {
                bail!("{}: xdp.max-patterns must be at least 1", at(m.span()));
            }
            if *m.get_ref() > MAX_MAX_PATTERNS {
                bail!(
                    "{}: xdp.max-patterns = {}: at most {MAX_MAX_PATTERNS} (the kernel \
                     preallocates 128 bytes per pattern)",
                    at(m.span()),
                    m.get_ref()
                );
            }
            xdp.max_patterns = m.into_inner();
        }
        if let Some(q) = raw.xdp.client_qps {
            if *q.get_ref() > 10_000_000 {
                bail!(
                    "{}: xdp.client-qps = {}: give 0 (no bound) to 10000000",
                    at(q.span()),
                    q.get_ref()
                );
            }
            xdp.client_qps = q.into_inner();
            xdp.client_burst = xdp.client_qps;
        }
        if let Some(b) = raw.xdp.client_burst {
            if *b.get_ref() == 0 || *b.get_ref() > 10_000_000 {
                bail!(
                    "{}: xdp.client-burst = {}: give 1 to 10000000 queries",
                    at(b.span()),
                    b.get_ref()
                );
            }
            xdp.client_burst = b.into_inner();
        }

        let mut patterns = PatternTable::default();
        for (list, action) in [
            (raw.patterns.block, Action::Block),
            (raw.patterns.allow, Action::Allow),
        ] {
            for p in list {
                patterns.add(p.get_ref(), action, at(p.span()))?;
            }
        }
        let forward = ForwardSettings::from_raw(raw.forward, raw.cache, raw.zone, &at)?;
        let auto = auto::AutoSettings::from_raw(raw.auto, &at)?;
        let kubernetes = kubernetes::KubernetesSettings::from_raw(raw.kubernetes, &at)?;
        Ok(Config {
            xdp,
            patterns,
            forward,
            auto,
            kubernetes,
            derived: None,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Config file plus flags, fully validated.
pub(crate) fn build(
    file: Option<&Path>,
    addresses: &[String],
    fwd: &ForwardFlags,
    kube: &KubeFlags,
) -> Result<Config> {
    let mut cfg = match file {
        Some(f) => Config::load(f)?,
        None => Config::default(),
    };
    if let Some(k) = &kube.kubeconfig {
        cfg.kubernetes.kubeconfig = Some(k.clone());
        cfg.kubernetes.enabled = true;
    }
    if cfg.kubernetes.enabled {
        // The API decides the cluster domain; auto mode keeps the rest of
        // the search list (the cloud and corporate suffixes).
        cfg.auto.enabled = true;
        cfg.auto.exact_cluster = true;
        cfg.kubernetes.check(&cfg.auto.cluster_domain)?;
    }
    for a in addresses {
        dnsmasq::add_address(&mut cfg.patterns, a)?;
    }
    if let Some(q) = fwd.client_qps {
        cfg.xdp.client_qps = q;
        cfg.xdp.client_burst = q.max(1);
    }
    let f = &mut cfg.forward;
    if !fwd.listen.is_empty() {
        f.listen = fwd
            .listen
            .iter()
            .map(|l| parse_listen(l).map_err(|e| anyhow::anyhow!("--listen={l}: {e}")))
            .collect::<Result<_>>()?;
    }
    for v in &fwd.servers {
        dnsmasq::add_server(f, v)?;
    }
    if let Some(n) = fwd.cache_size {
        f.cache.size = n;
    }
    if fwd.no_negcache {
        f.cache.neg_cache = false;
    }
    f.no_resolv |= fwd.no_resolv;
    f.log_queries |= fwd.log_queries;
    if cfg.auto.enabled {
        let derived = auto::derive(&cfg.auto, &cfg.patterns)?;
        derived.add_to(&mut cfg.patterns)?;
        cfg.derived = Some(derived);
    }
    if cfg.patterns.len() > cfg.xdp.max_patterns as usize {
        bail!(
            "{} patterns do not fit xdp.max-patterns = {}; raise it in the config",
            cfg.patterns.len(),
            cfg.xdp.max_patterns
        );
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config> {
        Config::parse(t, Path::new("dnsfast.toml"))
    }

    #[test]
    fn example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.xdp.ports, vec![53]);
        assert!(!c.patterns.is_empty());
    }

    #[test]
    fn empty_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.xdp, XdpSettings::default());
        assert!(c.patterns.is_empty());
    }

    #[test]
    fn bad_pattern_names_file_and_line() {
        let e = parse("[patterns]\nblock = [\n  \"ok.example\",\n  \"bad..example\",\n]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "dnsfast.toml:4: pattern 'bad..example': empty label (two dots in a row, or a leading dot)");
    }

    #[test]
    fn unknown_key_names_line() {
        let e = parse("[xdp]\nports = [53]\nprots = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("dnsfast.toml:3: unknown field `prots`"),
            "{e}"
        );
    }

    #[test]
    fn forwarder_values_are_checked_with_their_line() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        assert_eq!(
            e("[cache]\nmin-ttl = 100000\n"),
            "dnsfast.toml:2: cache.max-ttl (86400) is below cache.min-ttl (100000)"
        );
        assert_eq!(
            e("[forward]\nlisten = [\"127.0.0.1:53\", \"nope\"]\n"),
            "dnsfast.toml:2: 'nope' is not a listen address (IP, IP:PORT or [IPv6]:PORT)"
        );
        assert_eq!(
            e("[forward]\ntimeout-ms = 5\n"),
            "dnsfast.toml:2: timeout-ms = 5: use 10 to 60000 milliseconds"
        );
        assert_eq!(
            e("[[zone]]\nname = \"a.test\"\nupstreams = [\"10.0.0.1\", \"10.0.0.2#99999\"]\n"),
            "dnsfast.toml:3: '99999' is not a port (1-65535)"
        );
        assert_eq!(
            e("[[zone]]\nname = \"a.test\"\nupstreams = []\n"),
            "dnsfast.toml:2: zone 'a.test' has no upstreams"
        );
        assert!(e("[cache]\nsise = 1\n").starts_with("dnsfast.toml:2: unknown field `sise`"));
        assert_eq!(
            e("[forward]\nmax-udp-size = 100\n"),
            "dnsfast.toml:2: forward.max-udp-size 100: give 512 to 65535 bytes"
        );
        assert_eq!(parse("").unwrap().forward.max_udp_size, 1232);
        let c = parse(
            "[forward]\nlisten = [\"169.254.20.10\"]\n[[zone]]\nname = \".\"\nupstreams = [\"10.0.0.2\"]\npolicy = \"random\"\n",
        )
        .unwrap();
        assert_eq!(c.forward.listen[0].to_string(), "169.254.20.10:53");
        assert_eq!(c.forward.zones[0].name, ".");
    }

    #[test]
    fn conflicting_actions_are_refused() {
        let e = parse("[patterns]\nblock = [\"a.b\"]\nallow = [\"A.b.\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dnsfast.toml:3: pattern 'a.b' is both allow and block (at dnsfast.toml:2)"),
            "{e}"
        );
    }

    #[test]
    fn xdp_settings_are_checked() {
        assert!(parse("[xdp]\nports = []\n")
            .unwrap_err()
            .to_string()
            .starts_with("dnsfast.toml:2:"));
        assert!(parse("[xdp]\nports = [1,2,3,4,5]\n").is_err());
        assert!(parse("[xdp]\nports = [70000]\n")
            .unwrap_err()
            .to_string()
            .starts_with("dnsfast.toml:2"));
        let e = parse("[xdp]\nserver-addrs = [\"10.0.0.1\", \"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "dnsfast.toml:2: 'nope' is not an IP address");
        let c =
            parse("[xdp]\nserver-addrs = [\"169.254.20.10\", \"fd00::a\"]\nports = [53, 5353]\n")
                .unwrap();
        assert_eq!(c.xdp.server_addrs.len(), 2);
        assert_eq!(c.xdp.ports, vec![53, 5353]);
        assert_eq!(
            parse("[xdp]\nmax-patterns = 0\n").unwrap_err().to_string(),
            "dnsfast.toml:2: xdp.max-patterns must be at least 1"
        );
        assert_eq!(
            parse("[xdp]\nmax-patterns = 4194305\n")
                .unwrap_err()
                .to_string(),
            "dnsfast.toml:2: xdp.max-patterns = 4194305: at most 4194304 (the kernel \
             preallocates 128 bytes per pattern)"
        );
        assert_eq!(
            parse("[xdp]\nmax-patterns = 4194304\n")
                .unwrap()
                .xdp
                .max_patterns,
            4_194_304
        );
    }
}

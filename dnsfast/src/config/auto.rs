//! Search-path artifact rules, derived instead of listed by hand.
//!
//! Every pod's search list has the shape `<ns>.svc.<cd> svc.<cd> <cd>
//! <extra…>`, so a query name N is an artifact when N = Q.S for a search
//! suffix S and Q already looks fully qualified: Q's last label is a TLD,
//! or the last label of the cluster domain or of an extra suffix (`local`,
//! `internal`). The kernel gets one table entry per suffix (the longest
//! matching one decides, so `web.dev.svc.cluster.local` meets
//! `dev.svc.cluster.local` and passes) and a set of TLD labels; see
//! `dnsfast_common::suffix::decide` for the rule itself.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use dnsfast_common::pattern::{Action, Pattern};
use hickory_proto::rr::Name;
use serde::Deserialize;
use toml::Spanned;

use super::patterns::{Origin, PatternTable};

/// The ICANN top-level domains of the Public Suffix List, in ASCII
/// (punycode for IDNs). Regenerate with `cargo xtask update-tlds`.
pub(crate) const BUILTIN_TLDS: &str = include_str!("../../data/tlds.txt");

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawAuto {
    enabled: Option<bool>,
    cluster_domain: Option<Spanned<String>>,
    namespaces: Option<Vec<Spanned<String>>>,
    search: Option<Vec<Spanned<String>>>,
    resolv_conf: Option<PathBuf>,
    tld_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoSettings {
    /// On when a cluster domain is configured, unless `enabled = false`.
    pub enabled: bool,
    pub cluster_domain: String,
    pub namespaces: Vec<String>,
    /// Extra search suffixes; `None`: the node's resolv.conf `search` line.
    pub search: Option<Vec<String>>,
    pub resolv_conf: PathBuf,
    /// A Public Suffix List file to take the TLDs from instead of the
    /// built-in copy.
    pub tld_file: Option<PathBuf>,
    /// The Kubernetes API decides the cluster domain (`[kubernetes]`): no
    /// search suffixes under it are derived, only the extra ones.
    pub exact_cluster: bool,
}

fn canonical(text: &str, what: &str) -> Result<String> {
    Pattern::parse(text)
        .map(|p| p.name)
        .map_err(|e| anyhow::anyhow!("{what} '{text}': {e}"))
}

impl AutoSettings {
    /// Validates the `[auto]` table; `at` maps a byte span to file:line.
    pub(crate) fn from_raw(
        raw: RawAuto,
        at: &dyn Fn(std::ops::Range<usize>) -> Origin,
    ) -> Result<Self> {
        let name = |v: &Spanned<String>, what: &str| {
            canonical(v.get_ref(), what).map_err(|e| anyhow::anyhow!("{}: auto.{e}", at(v.span())))
        };
        let enabled = raw.enabled.unwrap_or(raw.cluster_domain.is_some());
        let cluster_domain = match &raw.cluster_domain {
            Some(cd) => name(cd, "cluster-domain")?,
            None => "cluster.local".to_string(),
        };
        let mut namespaces = Vec::new();
        for ns in raw.namespaces.unwrap_or_default() {
            let n = name(&ns, "namespace")?;
            if n.contains('.') {
                anyhow::bail!(
                    "{}: auto.namespace '{}' has a dot; a namespace is one label",
                    at(ns.span()),
                    ns.get_ref()
                );
            }
            namespaces.push(n);
        }
        let search = match raw.search {
            Some(list) => Some(
                list.iter()
                    .map(|s| name(s, "search suffix"))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok(Self {
            enabled,
            cluster_domain,
            namespaces,
            search,
            resolv_conf: raw
                .resolv_conf
                .unwrap_or_else(|| PathBuf::from(crate::config::forward::DEFAULT_RESOLV_CONF)),
            tld_file: raw.tld_file,
            exact_cluster: false,
        })
    }
}

/// Why a suffix or TLD label is in the derived set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    /// Search suffixes and where each comes from.
    pub suffixes: Vec<(Pattern, String)>,
    /// Suffixes left out because a hand-written pattern equals or covers
    /// them (an explicit allow always wins; a block covers them anyway).
    pub(crate) shadowed: Vec<(Pattern, String)>,
    pub tlds: BTreeSet<String>,
    /// Labels added to the TLD set beyond the list, and why.
    pub(crate) extra_tlds: Vec<(String, String)>,
    pub(crate) tld_source: String,
}

impl Derived {
    /// Adds the suffixes as `Action::Suffix` entries of `table`.
    pub fn add_to(&self, table: &mut PatternTable) -> Result<()> {
        for (p, why) in &self.suffixes {
            table.add(
                &p.name,
                Action::Suffix,
                Origin::Flag(format!("auto: {why}")),
            )?;
        }
        Ok(())
    }
}

/// The derived rules for `s`, given the hand-written `patterns`.
pub fn derive(s: &AutoSettings, patterns: &PatternTable) -> Result<Derived> {
    let cd = &s.cluster_domain;
    let extras: Vec<String> = match &s.search {
        Some(list) => list.clone(),
        None => search_line(&s.resolv_conf)?
            .into_iter()
            .filter(|d| d != cd && !d.ends_with(&format!(".{cd}")))
            .collect(),
    };
    let mut wanted: Vec<(String, String)> = vec![];
    if !s.exact_cluster {
        wanted.extend(
            s.namespaces
                .iter()
                .map(|ns| (format!("{ns}.svc.{cd}"), format!("namespace {ns}"))),
        );
        wanted.push((format!("svc.{cd}"), "cluster domain".into()));
        wanted.push((cd.clone(), "cluster domain".into()));
    }
    let from = if s.search.is_some() {
        "auto.search"
    } else {
        "resolv.conf search"
    };
    for e in &extras {
        wanted.push((e.clone(), format!("extra suffix ({from})")));
    }
    let mut suffixes = Vec::new();
    let mut shadowed = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, why) in wanted {
        let p = Pattern::parse(&name).with_context(|| format!("derived suffix '{name}'"))?;
        if !seen.insert(p.name.clone()) {
            continue;
        }
        match covering(patterns, &p) {
            Some((hand, action)) => {
                shadowed.push((p, format!("{why}; under {action} pattern {hand}")))
            }
            None => suffixes.push((p, why)),
        }
    }

    let (mut tlds, tld_source) = match &s.tld_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the TLD list {}", f.display()))?;
            (tlds_from_psl(&text)?, f.display().to_string())
        }
        None => (
            BUILTIN_TLDS
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect(),
            "built-in Public Suffix List (ICANN TLDs)".to_string(),
        ),
    };
    let mut extra_tlds = Vec::new();
    for d in std::iter::once(cd).chain(extras.iter()) {
        let last = d.rsplit('.').next().unwrap_or(d).to_string();
        if tlds.insert(last.clone()) {
            extra_tlds.push((last, format!("last label of {d}")));
        }
    }
    let cap = dnsfast_common::MAX_TLDS as usize;
    if tlds.len() > cap {
        anyhow::bail!(
            "{} TLD labels do not fit the kernel's set of {cap}",
            tlds.len()
        );
    }
    Ok(Derived {
        suffixes,
        shadowed,
        tlds,
        extra_tlds,
        tld_source,
    })
}

/// The longest hand-written pattern equal to `p` or above it.
fn covering(patterns: &PatternTable, p: &Pattern) -> Option<(String, Action)> {
    // `p` itself, then each shorter suffix at a label boundary.
    std::iter::once(p.name.as_str())
        .chain(p.name.match_indices('.').map(|(i, _)| &p.name[i + 1..]))
        .find_map(|name| patterns.action_of(name).map(|a| (name.to_string(), a)))
}

/// The domains of the last `search` (or `domain`) line of a resolv.conf.
fn search_line(path: &Path) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if matches!(w.next(), Some("search") | Some("domain")) {
            out = w
                .filter_map(|d| Pattern::parse(d).ok().map(|p| p.name))
                .collect();
        }
    }
    Ok(out)
}

/// The single-label entries of the ICANN section of a Public Suffix List,
/// in ASCII (IDNs in punycode).
pub(crate) fn tlds_from_psl(text: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut icann = false;
    for line in text.lines().map(str::trim) {
        if line.contains("===BEGIN ICANN DOMAINS===") {
            icann = true;
        } else if line.contains("===END ICANN DOMAINS===") {
            break;
        } else if icann && !line.is_empty() && !line.starts_with("//") && !line.contains('.') {
            let label = line.trim_start_matches(['!', '*']);
            let ascii = Name::from_utf8(label)
                .map(|n| n.to_ascii())
                .with_context(|| format!("TLD '{label}' has no ASCII form"))?;
            out.insert(ascii.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    if out.len() < 100 {
        anyhow::bail!(
            "only {} TLDs found: not a Public Suffix List (no ICANN section?)",
            out.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(search: &[&str]) -> AutoSettings {
        AutoSettings {
            enabled: true,
            cluster_domain: "cluster.local".into(),
            namespaces: vec!["default".into(), "dev".into()],
            search: Some(search.iter().map(|s| s.to_string()).collect()),
            resolv_conf: PathBuf::from("/nonexistent"),
            tld_file: None,
            exact_cluster: false,
        }
    }

    #[test]
    fn derives_the_pod_search_list_shape() {
        let d = derive(
            &settings(&["us-west-2.compute.internal", "compute.internal"]),
            &PatternTable::default(),
        )
        .unwrap();
        let names: Vec<&str> = d.suffixes.iter().map(|(p, _)| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "default.svc.cluster.local",
                "dev.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "us-west-2.compute.internal",
                "compute.internal"
            ]
        );
        assert!(d.tlds.contains("com") && d.tlds.contains("dev") && d.tlds.contains("io"));
        assert!(d.tlds.contains("xn--fiqs8s"), "IDN TLDs in punycode");
        assert!(d.tlds.len() > 1000);
        assert_eq!(
            d.extra_tlds,
            vec![
                (
                    "local".to_string(),
                    "last label of cluster.local".to_string()
                ),
                (
                    "internal".to_string(),
                    "last label of us-west-2.compute.internal".to_string()
                )
            ]
        );
    }

    #[test]
    fn hand_written_patterns_win() {
        let mut hand = PatternTable::default();
        hand.add("cluster.local", Action::Allow, Origin::Flag("t".into()))
            .unwrap();
        let d = derive(&settings(&["c.proj.internal"]), &hand).unwrap();
        let names: Vec<&str> = d.suffixes.iter().map(|(p, _)| p.name.as_str()).collect();
        assert_eq!(names, ["c.proj.internal"]);
        assert_eq!(d.shadowed.len(), 4);
        assert!(d.shadowed[0]
            .1
            .contains("under allow pattern cluster.local"));
    }

    #[test]
    fn resolv_conf_search_line_minus_the_cluster_ones() {
        let path = std::env::temp_dir().join(format!("dnsfast-auto-{}", std::process::id()));
        std::fs::write(
            &path,
            "nameserver 10.0.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local c.myproj.internal google.internal\n",
        )
        .unwrap();
        let mut s = settings(&[]);
        s.search = None;
        s.resolv_conf = path.clone();
        let d = derive(&s, &PatternTable::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let extra: Vec<&str> = d.suffixes[4..]
            .iter()
            .map(|(p, _)| p.name.as_str())
            .collect();
        assert_eq!(extra, ["c.myproj.internal", "google.internal"]);
    }

    #[test]
    fn psl_parsing() {
        let psl = format!(
            "// x\n// ===BEGIN ICANN DOMAINS===\n{}com\nco.uk\n*.ck\n!www.ck\n中国\n// ===END ICANN DOMAINS===\n// ===BEGIN PRIVATE DOMAINS===\nblogspot\n",
            (0..120).map(|i| format!("t{i}\n")).collect::<String>()
        );
        let t = tlds_from_psl(&psl).unwrap();
        assert!(t.contains("com") && t.contains("xn--fiqs8s"));
        assert!(!t.contains("co.uk") && !t.contains("blogspot"));
        assert!(tlds_from_psl("com\nnet\n")
            .unwrap_err()
            .to_string()
            .contains("not a Public Suffix List"));
    }
}

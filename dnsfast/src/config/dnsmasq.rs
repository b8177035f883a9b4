//! dnsmasq-compatible flags, so kube-dns's hand-tuned flags paste in as-is.

use anyhow::{bail, Result};
use dnsfast_common::pattern::Action;

use super::patterns::{Origin, PatternTable};
use crate::config::forward::{
    parse_upstream, parse_zone, ForwardSettings, Policy, UpstreamSpec, ZoneSpec,
};

/// Adds the domains of one `--address=/d1/d2/…/` value as block patterns.
///
/// dnsmasq answers NXDOMAIN for `--address=/d/` (empty target). A target
/// address (`/d/1.2.3.4`, `/d/#`) means "answer with this address", which
/// dnsfast does not do; it is refused rather than silently changed.
pub(crate) fn add_address(table: &mut PatternTable, value: &str) -> Result<()> {
    let flag = format!("--address={value}");
    let Some(rest) = value.strip_prefix('/') else {
        bail!("{flag}: expected the form /domain[/domain…]/ (dnsmasq syntax)");
    };
    let Some(last) = rest.rfind('/') else {
        bail!("{flag}: missing the closing '/' after the last domain");
    };
    let (domains, target) = (&rest[..last], &rest[last + 1..]);
    if !target.is_empty() {
        bail!(
            "{flag}: answering with address '{target}' is not supported; \
             dnsfast answers NXDOMAIN, written --address=/domain/"
        );
    }
    if domains.is_empty() {
        bail!("{flag}: no domain between the slashes");
    }
    for d in domains.split('/') {
        if d == "#" {
            bail!("{flag}: '#' (every domain) would block all DNS; list the suffixes instead");
        }
        table.add(d, Action::Block, Origin::Flag(flag.clone()))?;
    }
    Ok(())
}

/// Adds one `--server=` value: `IP[#PORT]` for the default zone,
/// `/zone/[zone/…]IP[#PORT]` for zones, `/zone/#` for "this zone uses the
/// default upstreams". Repeated flags for one zone add upstreams in order.
pub(crate) fn add_server(fwd: &mut ForwardSettings, value: &str) -> Result<()> {
    let flag = format!("--server={value}");
    let (zones, target): (Vec<&str>, &str) = match value.strip_prefix('/') {
        None => (vec!["."], value),
        Some(rest) => {
            let Some(last) = rest.rfind('/') else {
                bail!("{flag}: missing the closing '/' after the last domain");
            };
            let zones: Vec<&str> = rest[..last].split('/').collect();
            if zones.iter().any(|z| z.is_empty()) {
                bail!("{flag}: an empty domain between slashes");
            }
            (zones, &rest[last + 1..])
        }
    };
    if target.is_empty() {
        bail!(
            "{flag}: a zone without a server means \"answer locally\" in dnsmasq; \
             dnsfast answers such names with NXDOMAIN through --address=/domain/"
        );
    }
    if target.contains('@') {
        bail!("{flag}: a source address or interface (@…) is not supported");
    }
    let use_default = target == "#";
    let upstreams = if use_default {
        vec![]
    } else {
        let addr = parse_upstream(target).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        vec![UpstreamSpec {
            addr,
            timeout: fwd.timeout,
        }]
    };
    // Validate every zone before adding any, so nothing is half-applied.
    let mut specs = Vec::new();
    for z in zones {
        let name = parse_zone(z).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        if name == "." && use_default {
            bail!("{flag}: '#' names the default upstreams; give a server address");
        }
        specs.push(ZoneSpec {
            name,
            upstreams: upstreams.clone(),
            policy: Policy::Sequential,
            use_default,
            origin: Origin::Flag(flag.clone()),
        });
    }
    let mut next = fwd.clone();
    for z in specs {
        next.add_zone(z)?;
    }
    *fwd = next;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(t: &PatternTable) -> Vec<String> {
        t.iter().map(|(p, _)| p.name.clone()).collect()
    }

    #[test]
    fn kube_dns_forms_are_accepted() {
        let mut t = PatternTable::default();
        add_address(&mut t, "/com.svc.cluster.local/").unwrap();
        add_address(&mut t, "/net.svc.cluster.local/Org.svc.cluster.local./").unwrap();
        assert_eq!(
            names(&t),
            [
                "com.svc.cluster.local",
                "net.svc.cluster.local",
                "org.svc.cluster.local"
            ]
        );
        assert!(t.iter().all(|(_, a)| a == Action::Block));
    }

    #[test]
    fn errors_name_the_flag_and_cause() {
        let mut t = PatternTable::default();
        let err = |v: &str, t: &mut PatternTable| add_address(t, v).unwrap_err().to_string();
        assert_eq!(
            err("com.svc/", &mut t),
            "--address=com.svc/: expected the form /domain[/domain…]/ (dnsmasq syntax)"
        );
        assert!(err("/example.com/1.2.3.4", &mut t)
            .contains("answering with address '1.2.3.4' is not supported"));
        assert!(err("/example.com/#", &mut t).contains("not supported"));
        assert!(err("/#/", &mut t).contains("would block all DNS"));
        assert!(err("//", &mut t).contains("no domain"));
        assert!(
            err("/a..b/", &mut t).starts_with("flag --address=/a..b/: pattern 'a..b': empty label")
        );
        assert!(
            err("/example.com", &mut t).contains("expected")
                || err("/example.com", &mut t).contains("closing")
        );
        assert!(t.is_empty(), "nothing is half-applied");
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    fn zones(f: &ForwardSettings) -> Vec<(String, Vec<String>, bool)> {
        f.zones
            .iter()
            .map(|z| {
                (
                    z.name.clone(),
                    z.upstreams.iter().map(|u| u.addr.to_string()).collect(),
                    z.use_default,
                )
            })
            .collect()
    }

    #[test]
    fn kube_dns_server_flags() {
        let mut f = ForwardSettings::default();
        for v in [
            "/cluster.local/127.0.0.1#10053",
            "/in-addr.arpa/ip6.arpa/127.0.0.1#10053",
            "10.0.0.2",
            "fd00::53",
            "/Cluster.Local./127.0.0.2#10053",
            "/corp.example/#",
        ] {
            add_server(&mut f, v).unwrap();
        }
        assert_eq!(
            zones(&f),
            vec![
                (
                    "cluster.local".into(),
                    vec!["127.0.0.1:10053".into(), "127.0.0.2:10053".into()],
                    false
                ),
                ("in-addr.arpa".into(), vec!["127.0.0.1:10053".into()], false),
                ("ip6.arpa".into(), vec!["127.0.0.1:10053".into()], false),
                (
                    ".".into(),
                    vec!["10.0.0.2:53".into(), "[fd00::53]:53".into()],
                    false
                ),
                ("corp.example".into(), vec![], true),
            ]
        );
    }

    #[test]
    fn server_errors_name_the_flag() {
        let mut f = ForwardSettings::default();
        let err = |v: &str, f: &mut ForwardSettings| add_server(f, v).unwrap_err().to_string();
        assert!(err("/cluster.local/", &mut f).contains("--address=/domain/"));
        assert!(err("/cluster.local", &mut f).contains("closing '/'"));
        assert!(err("10.0.0.1@eth0", &mut f).contains("not supported"));
        assert!(err("/a//10.0.0.1", &mut f).contains("empty domain"));
        assert_eq!(
            err("/ok.example/a..b/10.0.0.1", &mut f),
            "--server=/ok.example/a..b/10.0.0.1: zone 'a..b': empty label (two dots in a row, or a leading dot)"
        );
        assert!(err("nonsense", &mut f).starts_with("--server=nonsense: 'nonsense' is not"));
        assert!(err("#", &mut f).contains("give a server address"));
        add_server(&mut f, "/x.example/#").unwrap();
        assert!(err("/x.example/10.0.0.1", &mut f).contains("pick one"));
        assert_eq!(f.zones.len(), 1, "nothing is half-applied");
    }
}

//! dnsmasq-compatible flags, so kube-dns's hand-tuned flags paste in as-is.

use anyhow::{bail, Result};
use dnsfast_common::pattern::Action;

use crate::config::{Origin, PatternTable};

/// Adds the domains of one `--address=/d1/d2/…/` value as block patterns.
///
/// dnsmasq answers NXDOMAIN for `--address=/d/` (empty target). A target
/// address (`/d/1.2.3.4`, `/d/#`) means "answer with this address", which
/// dnsfast does not do; it is refused rather than silently changed.
pub fn add_address(table: &mut PatternTable, value: &str) -> Result<()> {
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

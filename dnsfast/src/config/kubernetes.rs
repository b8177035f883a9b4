//! The `[kubernetes]` table: learning the cluster's names from the
//! Kubernetes API (Namespaces and Services) to decide the cluster domain
//! exactly. Off by default; `dnsfast load --kubeconfig FILE` or
//! `enabled = true` (in-cluster service account) turns it on.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Result};
use dnsfast_common::pattern::Pattern;
use serde::Deserialize;
use toml::Spanned;

use super::patterns::Origin;

/// After the watch has been broken this long, the cluster domain's kernel
/// verdicts are withdrawn (everything under it passes to the forwarder)
/// until a complete list has been read again.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKubernetes {
    enabled: Option<bool>,
    kubeconfig: Option<PathBuf>,
    stub_zones: Option<Vec<Spanned<String>>>,
    stale_after: Option<Spanned<f64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesSettings {
    pub enabled: bool,
    /// `None`: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Zones under the cluster domain the operator routes elsewhere: they
    /// pass whole, whatever the API says.
    pub stub_zones: Vec<String>,
    pub stale_after: Duration,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            kubeconfig: None,
            stub_zones: vec![],
            stale_after: DEFAULT_STALE_AFTER,
        }
    }
}

impl KubernetesSettings {
    /// Validates the `[kubernetes]` table; `at` maps a byte span to file:line.
    pub(crate) fn from_raw(
        raw: RawKubernetes,
        at: &dyn Fn(std::ops::Range<usize>) -> Origin,
    ) -> Result<Self> {
        let mut s = Self {
            enabled: raw.enabled.unwrap_or(raw.kubeconfig.is_some()),
            kubeconfig: raw.kubeconfig,
            ..Self::default()
        };
        for z in raw.stub_zones.unwrap_or_default() {
            match Pattern::parse(z.get_ref()) {
                Ok(p) => s.stub_zones.push(p.name),
                Err(e) => bail!(
                    "{}: kubernetes.stub-zones '{}': {e}",
                    at(z.span()),
                    z.get_ref()
                ),
            }
        }
        if let Some(v) = raw.stale_after {
            let secs = *v.get_ref();
            if !(secs.is_finite() && (0.0..=86_400.0).contains(&secs)) {
                bail!(
                    "{}: kubernetes.stale-after {secs}: give seconds from 0 to 86400",
                    at(v.span())
                );
            }
            s.stale_after = Duration::from_secs_f64(secs);
        }
        Ok(s)
    }

    /// Stub zones must lie under the cluster domain to mean anything.
    pub(crate) fn check(&self, cluster_domain: &str) -> Result<()> {
        for z in &self.stub_zones {
            if z != cluster_domain && !z.ends_with(&format!(".{cluster_domain}")) {
                bail!(
                    "kubernetes.stub-zones '{z}' is not under the cluster domain {cluster_domain}"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{build, Config, ForwardFlags, KubeFlags};

    fn parse(t: &str) -> anyhow::Result<Config> {
        Config::parse(t, std::path::Path::new("k.toml"))
    }

    #[test]
    fn the_table_is_checked_with_its_line() {
        let c = parse("[kubernetes]\nenabled = true\nstale-after = 5\n").unwrap();
        assert!(c.kubernetes.enabled);
        assert_eq!(c.kubernetes.stale_after, std::time::Duration::from_secs(5));
        let e = parse("[kubernetes]\nstale-after = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.toml:2") && e.contains("stale-after"), "{e}");
        let e = parse("[kubernetes]\nstub-zones = [\"a..b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.toml:2") && e.contains("a..b"), "{e}");
        let e = parse("[kubernetes]\nkubeconfg = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubeconfg"), "{e}");
        // A kubeconfig alone turns it on.
        assert!(
            parse("[kubernetes]\nkubeconfig = \"/k\"\n")
                .unwrap()
                .kubernetes
                .enabled
        );
    }

    #[test]
    fn on_it_leaves_the_cluster_domain_to_the_api() {
        let dir = std::env::temp_dir().join(format!("dnsfast-kube-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[auto]\ncluster-domain = \"cluster.local\"\nnamespaces = [\"dev\"]\n\
             search = [\"compute.internal\"]\n[kubernetes]\nenabled = true\n\
             stub-zones = [\"corp.cluster.local\"]\n",
        )
        .unwrap();
        let cfg = build(
            Some(&f),
            &[],
            &ForwardFlags::default(),
            &KubeFlags::default(),
        )
        .unwrap();
        let d = cfg.derived.unwrap();
        let names: Vec<&str> = d.suffixes.iter().map(|(p, _)| p.name.as_str()).collect();
        assert_eq!(names, ["compute.internal"], "only the extra suffixes");
        assert!(
            d.tlds.contains("local"),
            "the cluster domain's last label stays a TLD"
        );
        std::fs::write(
            &f,
            "[kubernetes]\nenabled = true\nstub-zones = [\"corp.example\"]\n",
        )
        .unwrap();
        let e = build(
            Some(&f),
            &[],
            &ForwardFlags::default(),
            &KubeFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not under the cluster domain"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

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

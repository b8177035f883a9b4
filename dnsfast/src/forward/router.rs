//! Per-zone routing: the longest zone suffix of a name, at label
//! boundaries, picks the upstreams. Zones share one `Upstream` per address,
//! so health learnt in one zone holds in every zone.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
};

use dnsfast_common::{pattern::Pattern, suffix::SuffixMap};
use rand::seq::SliceRandom;

use super::upstream::Upstream;
use crate::config::forward::{Policy, UpstreamSpec, ZoneSpec};

pub(crate) struct Zone {
    /// `.` for the default zone.
    pub(crate) name: String,
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    pub(crate) policy: Policy,
    pub(crate) queries: AtomicU64,
}

impl Zone {
    /// Healthy upstreams in the order to try them. None when every one
    /// is down: the zone answers SERVFAIL at once, rather than holding
    /// queries for timeouts, until a probe brings one back (within
    /// `PROBE_EVERY`).
    pub(crate) fn candidates(&self) -> Vec<Arc<Upstream>> {
        let mut v: Vec<Arc<Upstream>> = self
            .upstreams
            .iter()
            .filter(|u| u.is_up())
            .cloned()
            .collect();
        if self.policy == Policy::Random {
            v.shuffle(&mut rand::thread_rng());
        }
        v
    }
}

pub(crate) struct Router {
    by_suffix: SuffixMap<usize>,
    pub(crate) zones: Vec<Arc<Zone>>,
    pub(crate) upstreams: Vec<Arc<Upstream>>,
}

impl Router {
    pub(crate) fn new(specs: &[ZoneSpec]) -> Self {
        let mut shared: HashMap<SocketAddr, Arc<Upstream>> = HashMap::new();
        let mut upstreams = Vec::new();
        let mut get = |u: &UpstreamSpec| {
            shared
                .entry(u.addr)
                .or_insert_with(|| {
                    let up = Arc::new(Upstream::new(u.addr, u.timeout));
                    upstreams.push(up.clone());
                    up
                })
                .clone()
        };
        let root = specs.iter().find(|z| z.name == ".");
        let mut by_suffix = SuffixMap::new();
        let mut zones = Vec::new();
        for z in specs {
            let source = if z.use_default { root } else { Some(z) };
            let ups = source
                .map(|s| s.upstreams.iter().map(&mut get).collect())
                .unwrap_or_default();
            let key = if z.name == "." {
                Vec::new()
            } else {
                let (data, len) = Pattern::parse(&z.name)
                    .expect("zone names are validated")
                    .key();
                data[..len].to_vec()
            };
            by_suffix.insert(&key, zones.len());
            zones.push(Arc::new(Zone {
                name: z.name.clone(),
                upstreams: ups,
                policy: z.policy,
                queries: AtomicU64::new(0),
            }));
        }
        Self {
            by_suffix,
            zones,
            upstreams,
        }
    }

    /// The zone for a name's key, or `None` when no zone (not even a
    /// default) covers it.
    pub(crate) fn route(&self, key: &[u8]) -> Option<&Arc<Zone>> {
        self.by_suffix.longest(key).map(|(i, _)| &self.zones[*i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::forward::UpstreamSpec, config::Origin};
    use dnsfast_common::{pattern::to_wire, suffix::name_key};
    use std::time::Duration;

    fn zone(name: &str, ups: &[&str], use_default: bool) -> ZoneSpec {
        ZoneSpec {
            name: name.into(),
            upstreams: ups
                .iter()
                .map(|a| UpstreamSpec {
                    addr: a.parse().unwrap(),
                    timeout: Duration::from_secs(2),
                })
                .collect(),
            policy: Policy::Sequential,
            use_default,
            origin: Origin::Flag("test".into()),
        }
    }

    fn route<'a>(r: &'a Router, name: &str) -> Option<&'a str> {
        r.route(&name_key(&to_wire(name)).unwrap().0)
            .map(|z| z.name.as_str())
    }

    #[test]
    fn longest_zone_at_label_boundaries() {
        let r = Router::new(&[
            zone(".", &["10.0.0.1:53"], false),
            zone("cluster.local", &["10.0.0.10:53"], false),
            zone(
                "svc.cluster.local",
                &["10.0.0.11:53", "10.0.0.10:53"],
                false,
            ),
            zone("corp.example", &[], true),
        ]);
        assert_eq!(
            route(&r, "web.default.svc.cluster.local"),
            Some("svc.cluster.local")
        );
        assert_eq!(route(&r, "SVC.Cluster.Local"), Some("svc.cluster.local"));
        assert_eq!(route(&r, "xsvc.cluster.local"), Some("cluster.local"));
        assert_eq!(route(&r, "cluster.local.evil"), Some("."));
        assert_eq!(route(&r, "www.corp.example"), Some("corp.example"));
        // `#` zones use the default upstreams, and an address is one
        // upstream (one health record) whatever zones list it.
        assert_eq!(r.zones[3].upstreams[0].addr.to_string(), "10.0.0.1:53");
        assert!(Arc::ptr_eq(
            &r.zones[1].upstreams[0],
            &r.zones[2].upstreams[1]
        ));
        assert_eq!(r.upstreams.len(), 3);
    }

    #[test]
    fn no_default_zone_routes_nothing_else() {
        let r = Router::new(&[zone("cluster.local", &["10.0.0.10:53"], false)]);
        assert_eq!(route(&r, "example.com"), None);
        assert_eq!(route(&r, "a.cluster.local"), Some("cluster.local"));
    }

    /// Loopback ports nobody listens on: the probe is refused at once.
    #[tokio::test]
    async fn candidates_skip_down_upstreams() {
        let r = Router::new(&[zone(".", &["127.0.0.1:7", "127.0.0.1:9"], false)]);
        let z = &r.zones[0];
        let down = |i: usize| async move {
            for _ in 0..crate::forward::upstream::DOWN_AFTER {
                z.upstreams[i].mark_failure(std::time::Instant::now());
            }
            for _ in 0..100 {
                if !z.upstreams[i].is_up() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("an upstream that refuses its probe stays up");
        };
        down(0).await;
        let c = z.candidates();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].addr.to_string(), "127.0.0.1:9");
        down(1).await;
        assert!(z.candidates().is_empty());
        z.upstreams[0].mark_success();
        assert_eq!(z.candidates().len(), 1);
    }
}

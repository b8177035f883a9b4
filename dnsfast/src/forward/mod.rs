//! The user-space DNS path: what the XDP program passes up is answered
//! here, in one direction:
//!
//! listener (sockets, bytes only) → resolver (one `handle` for UDP and
//! TCP) → router (the zone) → upstream (the servers), with cache (user
//! space), kernel_cache (the XDP program's `ANSWERS` map), wire (DNS
//! bytes), metrics (counters) and selfcheck (the liveness query) beside it.
//!
//! Uses `rules` (what to block) and `config` (its settings); never the
//! dataplane: the kernel answer cache's map is handed in.

pub(crate) mod admission;
pub(crate) mod cache;
pub mod kernel_cache;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod resolver;
pub(crate) mod router;
pub(crate) mod selfcheck;
pub(crate) mod upstream;
pub mod wire;

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use arc_swap::ArcSwap;
use log::info;
use tokio::task::JoinSet;

use crate::{
    config::{auto::Derived, forward::ForwardSettings},
    rules::RuleSet,
};
use cache::Cache;
use metrics::Metrics;
use resolver::{live, Resolver};

/// How often down upstreams are probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The forwarder: bound by `bind`, serving after `start`. Its tasks end
/// when the runtime is dropped or when one of them fails.
pub(crate) struct Forwarder {
    pub(crate) resolver: Arc<Resolver>,
    sockets: Vec<(
        std::net::SocketAddr,
        Vec<tokio::net::UdpSocket>,
        tokio::net::TcpListener,
    )>,
    listening: Vec<std::net::SocketAddr>,
    tcp: crate::config::forward::TcpSettings,
    tasks: JoinSet<Result<()>>,
}

impl Forwarder {
    /// Binds every listener, so that a taken port fails here, before
    /// anything else is set up; nothing is served until `start`.
    pub(crate) fn bind(
        s: &ForwardSettings,
        rules: &RuleSet,
        derived: Option<&Derived>,
    ) -> Result<Forwarder> {
        let resolver = Arc::new(Resolver {
            live: ArcSwap::from_pointee(live(s, rules, derived)?),
            cache: Cache::new(&s.cache),
            admission: admission::Admission::new(s.max_inflight, s.max_inflight_per_client),
            metrics: Metrics::default(),
            kernel_cache: std::sync::OnceLock::new(),
            cluster: Default::default(),
            epoch: Default::default(),
        });
        let workers = s.worker_count();
        let mut sockets = Vec::new();
        for addr in &s.listen {
            let udp = listener::bind_udp(*addr, workers)?;
            let tcp = listener::bind_tcp(*addr)?;
            sockets.push((*addr, udp, tcp));
        }
        Ok(Forwarder {
            resolver,
            listening: s.listen.clone(),
            tcp: s.tcp.clone(),
            sockets,
            tasks: JoinSet::new(),
        })
    }

    /// Spawns the serving tasks on the current runtime. `load` calls it
    /// once the XDP program and its answer cache are in place, so that the
    /// first answers already reach the kernel's cache.
    pub(crate) fn start(&mut self) {
        for (addr, udp, tcp) in self.sockets.drain(..) {
            let workers = udp.len();
            for sock in udp {
                self.tasks
                    .spawn(listener::serve_udp(sock, self.resolver.clone()));
            }
            self.tasks.spawn(listener::serve_tcp(
                tcp,
                self.resolver.clone(),
                self.tcp.clone(),
            ));
            info!("forwarder listening on {addr} (udp x{workers}, tcp)");
        }
        self.tasks
            .spawn(probe_down_upstreams(self.resolver.clone()));
    }

    /// Waits until a serving task fails; normally never returns.
    pub(crate) async fn run(&mut self) -> Result<()> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(anyhow::anyhow!("forwarder task: {e}")),
            None => Ok(()),
        }
    }

    /// The addresses it answers on.
    pub(crate) fn listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listening.clone()
    }
}

/// Every second, asks each down upstream for the root NS; any answer
/// that matches (whatever its RCODE) shows it is alive again.
async fn probe_down_upstreams(r: Arc<Resolver>) -> Result<()> {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let router = r.live.load().router.clone();
        for up in router.upstreams.iter().filter(|u| !u.is_up()) {
            if up.exchange_udp(upstream::probe_query()).await.is_ok() {
                up.mark_success();
            }
        }
    }
}

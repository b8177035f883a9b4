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

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

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
    max_inflight: usize,
    /// Duplicates of the listening sockets, for the agent that takes over.
    handover: Vec<(std::net::SocketAddr, Proto, OwnedFd)>,
    /// Set when the listeners must stop taking new queries (a drain).
    stop: tokio::sync::watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
}

/// What a handed-over socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Proto {
    Udp,
    Tcp,
    /// The agent's metrics endpoint.
    Metrics,
}

/// Sockets received from the agent this one replaces, by address.
#[derive(Default)]
pub(crate) struct Inherited {
    pub(crate) sockets: Vec<(std::net::SocketAddr, Proto, OwnedFd)>,
}

impl Inherited {
    fn take(&mut self, addr: std::net::SocketAddr, proto: Proto) -> Vec<OwnedFd> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(a, p, _)| *a == addr && *p == proto);
        self.sockets = rest;
        mine.into_iter().map(|(_, _, fd)| fd).collect()
    }

    fn take_udp(&mut self, addr: std::net::SocketAddr) -> Option<Vec<tokio::net::UdpSocket>> {
        let fds = self.take(addr, Proto::Udp);
        let socks: Vec<_> = fds
            .into_iter()
            .filter_map(|fd| {
                let s = std::net::UdpSocket::from(fd);
                s.set_nonblocking(true).ok()?;
                tokio::net::UdpSocket::from_std(s).ok()
            })
            .collect();
        (!socks.is_empty()).then_some(socks)
    }

    fn take_tcp(&mut self, addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
        let fd = self.take(addr, Proto::Tcp).pop()?;
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true).ok()?;
        tokio::net::TcpListener::from_std(l).ok()
    }

    /// The metrics listener on `addr`, if handed over.
    pub(crate) fn take_metrics(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let fd = self.take(addr, Proto::Metrics).pop()?;
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true).ok()?;
        Some(l)
    }
}

impl Forwarder {
    /// Binds every listener, so that a taken port fails here, before
    /// anything else is set up; nothing is served until `start`. A listen
    /// address found in `inherited` (handed over by the agent this one
    /// replaces) takes those sockets instead of new ones: the same socket
    /// objects, whose queues carry on, so no datagram or connection in
    /// them is lost.
    pub(crate) fn bind(
        s: &ForwardSettings,
        rules: &RuleSet,
        derived: Option<&Derived>,
        inherited: &mut Inherited,
    ) -> Result<Forwarder> {
        let resolver = Arc::new(Resolver {
            live: ArcSwap::from_pointee(live(s, rules, derived)?),
            cache: Cache::new(&s.cache),
            admission: admission::Admission::new(s.max_inflight, s.max_inflight_per_client),
            waiting: Arc::new(tokio::sync::Semaphore::new(s.max_inflight)),
            metrics: Metrics::default(),
            kernel_cache: std::sync::OnceLock::new(),
            cluster: Default::default(),
            epoch: Default::default(),
        });
        let workers = s.worker_count();
        let mut sockets = Vec::new();
        for addr in &s.listen {
            let udp = match inherited.take_udp(*addr) {
                Some(v) => v,
                None => listener::bind_udp(*addr, workers)?,
            };
            let tcp = match inherited.take_tcp(*addr) {
                Some(l) => l,
                None => listener::bind_tcp(*addr)?,
            };
            sockets.push((*addr, udp, tcp));
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        Ok(Forwarder {
            resolver,
            listening: s.listen.clone(),
            tcp: s.tcp.clone(),
            max_inflight: s.max_inflight,
            handover: Vec::new(),
            sockets,
            stop,
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
                if let Ok(fd) = sock.as_fd().try_clone_to_owned() {
                    self.handover.push((addr, Proto::Udp, fd));
                }
                self.tasks.spawn(listener::serve_udp(
                    sock,
                    self.resolver.clone(),
                    self.stop.subscribe(),
                ));
            }
            if let Ok(fd) = tcp.as_fd().try_clone_to_owned() {
                self.handover.push((addr, Proto::Tcp, fd));
            }
            self.tasks.spawn(listener::serve_tcp(
                tcp,
                self.resolver.clone(),
                self.tcp.clone(),
                self.stop.subscribe(),
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

    /// Duplicates of its listening sockets, to hand to the next agent.
    pub(crate) fn handover_sockets(&self) -> Vec<(std::net::SocketAddr, Proto, OwnedFd)> {
        self.handover
            .iter()
            .filter_map(|(a, p, fd)| Some((*a, *p, fd.try_clone().ok()?)))
            .collect()
    }

    /// The handle that stops the listeners (`Draining::stop`).
    pub(crate) fn draining(&self) -> Draining {
        Draining {
            stop: self.stop.clone(),
            resolver: self.resolver.clone(),
            max_inflight: self.max_inflight,
        }
    }
}

/// Stops a forwarder's listeners from taking new queries and waits for
/// the ones in flight upstream: what was asked before is answered.
#[derive(Clone)]
pub(crate) struct Draining {
    stop: tokio::sync::watch::Sender<bool>,
    resolver: Arc<Resolver>,
    max_inflight: usize,
}

impl Draining {
    /// Stops reading and accepting, then waits (at most `limit`) until no
    /// query is out upstream. Returns how many were still out.
    pub(crate) async fn stop(&self, limit: Duration) -> usize {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let out = 2 * self.max_inflight
                - self.resolver.admission.available()
                - self.resolver.waiting.available_permits();
            if out == 0 || tokio::time::Instant::now() >= deadline {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

//! The running agent (`dnsfast load`): the loaded program and its maps, the
//! interfaces it is on, the forwarder, and the ways to change them live.
//!
//! - `runtime`: the tokio runtime, the signals, the wait for either;
//! - `ifaces`: which interfaces carry the program, and handing links over
//!   between agents; `link_watch`: the kernel's link announcements;
//! - `control`: the control socket's server; `client`: asking a running
//!   agent over it (the CLI, and a new agent taking over);
//! - `handover`: a new agent taking a running one's place without a gap;
//! - `config_watch`: SIGHUP and the config file's directory → a reload;
//! - `cluster` and `cluster_watch`: the Kubernetes API's Namespaces and
//!   Services, and the exact cluster-domain entries made of them;
//! - `lease`: the kernel lease that gates what only a live agent vouches for;
//! - `events`: `dnsfast watch`'s query events from the kernel ring;
//! - `stats`: the typed status and stats snapshots everything renders;
//! - `http`: `/metrics` (OpenMetrics), `/health`, `/ready`.
//!
//! Uses the dataplane, the forwarder, the rules and the config; the CLI
//! uses it, never the other way round.

pub(crate) mod client;
pub(crate) mod cluster;
pub(crate) mod cluster_watch;
pub(crate) mod config_watch;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod handover;
pub(crate) mod http;
pub(crate) mod ifaces;
pub(crate) mod lease;
pub(crate) mod link_watch;
pub(crate) mod openmetrics;
pub(crate) mod runtime;
pub(crate) mod state;
pub(crate) mod stats;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::SystemTime,
};

use anyhow::{anyhow, bail, Context, Result};
use log::{info, warn};

use crate::{
    config::{self, ForwardFlags, KubeFlags},
    dataplane::{
        self, attach::AttachMode, kernel_version, pins, require_root, Dataplane, LoadOptions,
    },
    forward::{self, kernel_cache::KernelCache, Forwarder},
    paths, rules,
};
use ifaces::Ifaces;
use state::{poisoned, Agent, Applied, Inputs};

/// How long a stopping agent waits for its queries in flight upstream.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What `dnsfast load` was asked to do (its command line).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Interface names and globs to attach to.
    pub(crate) ifaces: Vec<String>,
    pub(crate) config: Option<PathBuf>,
    /// dnsmasq-style `--address` values.
    pub(crate) addresses: Vec<String>,
    pub(crate) mode: AttachMode,
    pub(crate) pin_dir: PathBuf,
    pub(crate) no_forward: bool,
    pub(crate) keep_attached: bool,
    pub(crate) metrics: Option<SocketAddr>,
    pub(crate) forward: ForwardFlags,
    pub(crate) kube: KubeFlags,
}

/// `dnsfast load`: validate, load, fill, attach (or adopt), pin, serve
/// until told to stop, then detach (or leave attached) and clean up.
pub(crate) fn run(args: Options) -> Result<()> {
    // Everything that can be checked without touching the kernel is checked
    // first, so a bad input never leaves a half-applied state behind.
    let cfg = config::build(
        args.config.as_deref(),
        &args.addresses,
        &args.forward,
        &args.kube,
    )?;
    let mut ifs = Ifaces::new(&args.ifaces, args.mode, &args.pin_dir)?;
    require_root("dnsfast load")?;
    kernel_version::check_running_kernel()?;
    // An agent already running here hands its place over (a DaemonSet's
    // surge update): its sockets now, its links once this one is ready.
    let (takeover, mut inherited) = match handover::begin(&args.pin_dir)? {
        Some((t, i)) => (Some(t), i),
        None => (None, forward::Inherited::default()),
    };
    let rt = runtime::runtime(if args.no_forward {
        1
    } else {
        cfg.forward.worker_count()
    })?;
    let (mut shutdown, hup) = {
        let _guard = rt.enter();
        (runtime::Shutdown::install()?, config_watch::hangup()?)
    };
    // Listeners are bound before the kernel is touched, so a taken port
    // fails the command with nothing loaded.
    let mut forwarder = if args.no_forward {
        None
    } else {
        let _guard = rt.enter();
        Some(Forwarder::bind(
            &cfg.forward,
            &rules::rules_of(&cfg.patterns),
            cfg.derived.as_ref(),
            &mut inherited,
        )?)
    };
    // The Kubernetes API client: a bad kubeconfig fails here, with nothing
    // loaded; an API that does not answer does not (it is a state).
    let cluster = if cfg.kubernetes.enabled {
        let client = rt.block_on(cluster_watch::client(&cfg.kubernetes))?;
        let w = Arc::new(cluster::ClusterWatch::new(
            &cfg.auto.cluster_domain,
            &cfg.kubernetes,
        ));
        Some((w, client))
    } else {
        None
    };
    dataplane::attach::raise_memlock();
    // One descriptor per TCP connection and per upstream query in flight
    // (its own socket), plus the maps, listeners and a margin.
    let f = &cfg.forward;
    runtime::raise_nofile((f.tcp.max_connections + f.max_inflight + 256) as u64);
    pins::ensure_bpffs(&args.pin_dir)?;
    let kept = ifaces::kept_links(&args.pin_dir)?;
    let adopting = !kept.is_empty() || takeover.is_some();
    let mut pin_dir = pins::PinDir::prepare(&args.pin_dir, adopting)?;

    // The kernel answer cache mirrors the forwarder's: same capacity, and
    // nothing without a forwarder to fill it. Its program runs whenever
    // the forwarder does (with an empty one-entry map when the cache is
    // off): it also holds each client to `xdp.client-qps`.
    let answer_cache = match &forwarder {
        Some(_) => u32::try_from(cfg.forward.cache.size)
            .unwrap_or(u32::MAX)
            .max(1),
        None => 0,
    };
    let opts = LoadOptions {
        bench_mode: false,
        max_patterns: cfg.xdp.max_patterns,
        answer_cache,
    };
    // Loading parses the kernel's BTF (megabytes of small allocations) and
    // frees it again. On a thread of its own that work lands in a separate
    // malloc arena, which glibc hands back to the kernel when the thread
    // ends; on the main thread it would stay in the agent's RSS for good.
    let mut dp = std::thread::scope(|s| {
        s.spawn(|| Dataplane::load(&opts))
            .join()
            .map_err(|_| anyhow!("the loader thread panicked"))
    })??;
    dataplane::apply(&mut dp, &cfg)?;
    lease::take(&mut dp)?;
    if forwarder.is_some() && answer_cache > 0 {
        for a in &cfg.forward.listen {
            dp.add_listen_addr(*a)?;
        }
        // The previous agent's cached answers, if its maps read the same.
        let old = paths::map_pin(&args.pin_dir, dnsfast_common::MAP_ANSWERS);
        if adopting && old.exists() && cfg.forward.cache.size > 0 {
            match pins::check_layout(&args.pin_dir).and_then(|_| dp.warm_answers_from(&old)) {
                Ok(n) => info!("kernel answer cache warmed with the previous agent's {n} answers"),
                Err(e) => info!("kernel answer cache starts cold: {e:#}"),
            }
        }
    }
    if !kept.is_empty() || takeover.is_some() {
        let n = ifaces::adopt_kept(&mut dp, &mut ifs, &args.pin_dir)?;
        info!("took over {n} interface(s) from the previous agent without detaching");
        pin_dir.remove_old();
    }
    ifaces::sync(&mut dp, &mut ifs)?;
    for s in &ifs.specs {
        if !s.is_glob() && !ifs.attached.contains_key(&s.0) {
            bail!("{}: could not attach (see the log above)", s.0);
        }
    }
    dp.pin_maps(&pin_dir.dir)?;
    dp.pin_program(&pin_dir.dir)?;
    // Pinned first (the next agent warms its cache from it), then handed
    // to the forwarder, which fills it.
    if let Some(f) = &forwarder {
        if answer_cache > 0 {
            let map = dp.take_answer_map()?;
            if cfg.forward.cache.size > 0 {
                let _ = f.resolver.kernel_cache.set(KernelCache::new(map));
            }
        }
    }
    let program_id = dp.program_id()?;
    let events = match dp.take_events() {
        Ok(ring) => Some(events::Events::start(ring)?),
        Err(e) => {
            warn!("dnsfast watch will be unavailable: {e:#}");
            None
        }
    };
    if let Some(f) = &mut forwarder {
        let _guard = rt.enter();
        f.start();
    }
    let metrics = match args.metrics {
        Some(addr) => Some(match inherited.take_metrics(addr) {
            Some(l) => {
                let _guard = rt.enter();
                tokio::net::TcpListener::from_std(l)
                    .with_context(|| format!("taking over the metrics endpoint {addr}"))?
            }
            None => rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        }),
        None => None,
    };
    let mut sockets = forwarder
        .as_ref()
        .map(|f| f.handover_sockets())
        .unwrap_or_default();
    if let (Some(l), Some(addr)) = (&metrics, args.metrics) {
        if let Ok(fd) = std::os::fd::AsFd::as_fd(l).try_clone_to_owned() {
            sockets.push((addr, forward::Proto::Metrics, fd));
        }
    }
    let draining = forwarder.as_ref().map(|f| f.draining());
    let agent = Arc::new(Agent {
        pid: std::process::id(),
        started: SystemTime::now(),
        pin_dir: args.pin_dir.clone(),
        keep_attached: args.keep_attached,
        inputs: Inputs {
            config: args.config.clone(),
            addresses: args.addresses.clone(),
            forward: args.forward.clone(),
            kube: args.kube.clone(),
        },
        dp: Mutex::new(dp),
        ifaces: Mutex::new(ifs),
        applied: Mutex::new(Applied {
            file: match &args.config {
                Some(p) => std::fs::read(p).ok(),
                None => None,
            },
            cfg,
            reloads: 0,
            refused: 0,
            last_error: None,
            last_reload: None,
        }),
        forwarder: forwarder.as_ref().map(|f| f.resolver.clone()),
        listeners: forwarder
            .as_ref()
            .map(|f| f.listen_addrs())
            .unwrap_or_default(),
        program_id,
        events,
        cluster: cluster.as_ref().map(|(w, _)| w.clone()),
        ready: AtomicBool::new(false),
        unloading: AtomicBool::new(false),
        sockets,
        handing_over: AtomicBool::new(false),
        handed_over: AtomicBool::new(false),
        stop: tokio::sync::Notify::new(),
    });
    // Bound now: a previous agent's socket file is replaced (it keeps its
    // own connection open until it stands down).
    let mut socket = control::Socket::bind(&args.pin_dir)?;

    let mut tasks = tokio::task::JoinSet::new();
    {
        let _guard = rt.enter();
        if let Some(l) = socket.take_listener()? {
            tasks.spawn(control::serve(l, agent.clone()));
        }
        tasks.spawn(config_watch::watch(agent.clone(), hup));
        tasks.spawn(lease::renew(agent.clone()));
        if let Some((w, client)) = cluster {
            tasks.spawn(cluster_watch::run(agent.clone(), w, client));
        }
        if let (Some(l), Some(addr)) = (metrics, args.metrics) {
            info!("metrics on http://{addr}/metrics (and /health, /ready)");
            tasks.spawn(http::serve(l, agent.clone()));
        }
    }
    link_watch::watch(agent.clone())?;
    // Links that appeared between the first sync and the netlink
    // subscription.
    agent.sync_ifaces()?;
    agent
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    info!(
        "serving: program {program_id} on [{}], maps pinned in {}, control socket {}",
        agent
            .ifaces
            .lock()
            .map(|i| i.attached.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        pin_dir.dir.display(),
        paths::control_socket(&args.pin_dir).display()
    );
    if let Some(t) = takeover {
        t.finish()?;
    }

    #[cfg(feature = "ebpf-log")]
    if let Some(logger) = agent.dp.lock().ok().and_then(|mut d| d.logger.take()) {
        runtime::forward_ebpf_logs(logger);
    }
    let result = rt.block_on(async {
        tokio::select! {
            r = runtime::serve_until_signal(&mut shutdown, forwarder.as_mut()) => r,
            _ = agent.stop.notified() => Ok(()),
            Some(r) = tasks.join_next() => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow!("an agent task: {e}")),
            },
        }
    });
    agent
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let handed_over = agent.handed_over.load(std::sync::atomic::Ordering::SeqCst);
    // Stop taking queries, and answer the ones already taken: after a
    // handover the sockets live on in the new agent, and on a plain stop
    // a query in flight is not dropped for want of a second.
    if let Some(d) = &draining {
        let left = rt.block_on(d.stop(DRAIN_LIMIT));
        if left > 0 {
            warn!("{left} queries were still out upstream after {DRAIN_LIMIT:?}");
        }
    }
    if let Some(f) = &forwarder {
        info!("{}", stats::forwarder_stats(&f.resolver).summary());
    }
    drop(tasks);
    if handed_over {
        // The links, pins, sockets and control socket are the new
        // agent's: nothing is detached or removed. Idle until stopped, as
        // the old pod of a surge update is right after the new one is
        // ready (exiting here would have the kubelet restart this
        // container, which would take over again).
        pin_dir.keep();
        info!("handed over; idle until stopped");
        rt.block_on(shutdown.wait());
        drop(rt);
        drop(socket);
        return result;
    }
    drop(rt); // stops the forwarder's tasks and closes its sockets
    drop(socket);
    let unloading = agent.unloading.load(std::sync::atomic::Ordering::Relaxed);
    let mut dp = agent.dp.lock().map_err(poisoned)?;
    let mut ifs = agent.ifaces.lock().map_err(poisoned)?;
    if args.keep_attached && result.is_ok() && !unloading {
        ifaces::keep_all(&mut dp, &mut ifs, &pin_dir.dir)?;
        pin_dir.keep();
        info!(
            "left attached with maps pinned in {}: the next `dnsfast load` adopts them; \
             `dnsfast unload` detaches",
            pin_dir.dir.display()
        );
    } else {
        info!("detaching and removing pins");
    }
    // Detaches every link still owned and closes the program.
    for (_, a) in std::mem::take(&mut ifs.attached) {
        let _ = dp.detach(a.link);
    }
    drop(ifs);
    drop(dp);
    drop(pin_dir);
    result
}

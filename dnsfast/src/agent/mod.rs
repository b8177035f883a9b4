//! The running agent (`dnsfast load`): the loaded program and its maps, the
//! interfaces it is on, the forwarder, and the ways to change them live.
//!
//! - `runtime`: the tokio runtime, the signals, the wait for either;
//! - `ifaces`: which interfaces carry the program, and handing links over
//!   between agents; `link_watch`: the kernel's link announcements;
//! - `control`: the control socket (server, and the client the CLI uses);
//! - `config_watch`: SIGHUP and the config file's directory → a reload;
//! - `cluster` and `cluster_watch`: the Kubernetes API's Namespaces and
//!   Services, and the exact cluster-domain entries made of them;
//! - `events`: `dnsfast watch`'s query events from the kernel ring;
//! - `stats`: the typed status and stats snapshots everything renders;
//! - `http`: `/metrics` (OpenMetrics), `/health`, `/ready`.
//!
//! Uses the dataplane, the forwarder, the rules and the config; the CLI
//! uses it, never the other way round.

pub(crate) mod cluster;
pub(crate) mod cluster_watch;
pub(crate) mod config_watch;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod http;
pub(crate) mod ifaces;
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
    forward::{kernel_cache::KernelCache, Forwarder},
    paths, rules,
};
use ifaces::Ifaces;
use state::{poisoned, Agent, Applied, Inputs};

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
    let mut ifs = Ifaces::new(&args.ifaces, args.mode)?;
    require_root("dnsfast load")?;
    kernel_version::check_running_kernel()?;
    if let Some(v) = control::ask(&args.pin_dir, "status").unwrap_or(None) {
        bail!(
            "another dnsfast agent (pid {}) runs with the pins in {}; stop it first, or use \
             another --pin-dir",
            v["pid"],
            args.pin_dir.display()
        );
    }
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
    let mut socket = control::Socket::bind(&args.pin_dir)?;
    dataplane::attach::raise_memlock();
    // One descriptor per TCP connection and per upstream query in flight
    // (its own socket), plus the maps, listeners and a margin.
    let f = &cfg.forward;
    runtime::raise_nofile((f.tcp.max_connections + f.max_inflight + 256) as u64);
    pins::ensure_bpffs(&args.pin_dir)?;
    let kept = ifaces::kept_links(&args.pin_dir)?;
    let mut pin_dir = pins::PinDir::prepare(&args.pin_dir, !kept.is_empty())?;

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
    if let Some(f) = &forwarder {
        if answer_cache > 0 {
            for a in &cfg.forward.listen {
                dp.add_listen_addr(*a)?;
            }
            let map = dp.take_answer_map()?;
            if cfg.forward.cache.size > 0 {
                let _ = f.resolver.kernel_cache.set(KernelCache::new(map));
            }
        }
    }
    if !kept.is_empty() {
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
        stop: tokio::sync::Notify::new(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    {
        let _guard = rt.enter();
        if let Some(l) = socket.take_listener()? {
            tasks.spawn(control::serve(l, agent.clone()));
        }
        tasks.spawn(config_watch::watch(agent.clone(), hup));
        if let Some((w, client)) = cluster {
            tasks.spawn(cluster_watch::run(agent.clone(), w, client));
        }
        if let Some(addr) = args.metrics {
            let l = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
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
    if let Some(f) = &forwarder {
        info!("{}", stats::forwarder_stats(&f.resolver).summary());
    }
    drop(tasks);
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

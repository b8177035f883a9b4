//! `dnsfast load`: validate everything, then load, fill, attach, pin, serve,
//! and undo it all on the way out.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use clap::{Args, ValueEnum};
use dnsfast_common::{AddrKey, Config as XdpConfig, FAMILY_V4, FAMILY_V6, MAX_PORTS, PIN_DIR};
use log::{debug, info, warn};

use crate::{
    bpf::{require_root, Dataplane, LoadOptions},
    config::Config,
    dnsmasq,
    forward::{kernel::KernelCache, settings::parse_listen, Forwarder},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Interface to attach to; repeat for several.
    #[arg(long = "iface", required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// TOML config file (see `dnsfast example-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// dnsmasq-style NXDOMAIN suffixes, e.g. --address=/com.svc.cluster.local/;
    /// repeatable, several domains per flag as in dnsmasq.
    #[arg(long = "address", value_name = "/DOMAIN[/DOMAIN…]/")]
    pub addresses: Vec<String>,
    /// XDP attach mode. `auto` picks native on physical NICs and SKB
    /// (generic) on virtual ones such as veths, where native XDP_TX would
    /// need a program on the peer.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Where the maps are pinned, for the CLI and bpftool.
    #[arg(long, value_name = "DIR", default_value = PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Run only the XDP program; no DNS forwarder in user space.
    #[arg(long)]
    pub no_forward: bool,
    #[command(flatten)]
    pub forward: ForwardArgs,
}

/// The forwarder's flags, shared by `load` and `serve`. The dnsmasq ones
/// (--server, --cache-size, --no-negcache, --no-resolv, --log-queries) take
/// kube-dns's values unchanged.
#[derive(Args, Debug, Default, Clone)]
pub struct ForwardArgs {
    /// Address to answer DNS on, over UDP and TCP: IP:PORT, [IPv6]:PORT, or
    /// IP for port 53. Repeat for several; replaces forward.listen from the
    /// config. Default 127.0.0.1:53.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Upstream, dnsmasq style: IP[#PORT] for every name,
    /// /ZONE/[ZONE/…]IP[#PORT] for names under the zones (longest zone
    /// wins), /ZONE/# for "the default upstreams". Repeat to add upstreams,
    /// tried in order.
    #[arg(long = "server", value_name = "[/ZONE/]IP[#PORT]")]
    pub servers: Vec<String>,
    /// Answer cache capacity in entries (0 turns it off). Default 10000.
    #[arg(long = "cache-size", value_name = "N")]
    pub cache_size: Option<usize>,
    /// Do not cache NXDOMAIN or NODATA (the default; accepted for dnsmasq
    /// compatibility, and overrides cache.neg-cache = true).
    #[arg(long)]
    pub no_negcache: bool,
    /// Do not take default upstreams from /etc/resolv.conf.
    #[arg(long)]
    pub no_resolv: bool,
    /// Log one line per query: client, name, type, route, upstream, rcode,
    /// cache outcome and latency.
    #[arg(long)]
    pub log_queries: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Auto,
    Native,
    Skb,
}

/// Config file plus flags, fully validated.
pub fn build_config(
    file: Option<&Path>,
    addresses: &[String],
    fwd: &ForwardArgs,
) -> Result<Config> {
    let mut cfg = match file {
        Some(f) => Config::load(f)?,
        None => Config::default(),
    };
    for a in addresses {
        dnsmasq::add_address(&mut cfg.patterns, a)?;
    }
    let f = &mut cfg.forward;
    if !fwd.listen.is_empty() {
        f.listen = fwd
            .listen
            .iter()
            .map(|l| parse_listen(l).map_err(|e| anyhow::anyhow!("--listen={l}: {e}")))
            .collect::<Result<_>>()?;
    }
    for v in &fwd.servers {
        dnsmasq::add_server(f, v)?;
    }
    if let Some(n) = fwd.cache_size {
        f.cache.size = n;
    }
    if fwd.no_negcache {
        f.cache.neg_cache = false;
    }
    f.no_resolv |= fwd.no_resolv;
    f.log_queries |= fwd.log_queries;
    if cfg.auto.enabled {
        let derived = crate::auto::derive(&cfg.auto, &cfg.patterns)?;
        derived.add_to(&mut cfg.patterns)?;
        cfg.derived = Some(derived);
    }
    if cfg.patterns.len() > cfg.xdp.max_patterns as usize {
        bail!(
            "{} patterns do not fit xdp.max-patterns = {}; raise it in the config",
            cfg.patterns.len(),
            cfg.xdp.max_patterns
        );
    }
    Ok(cfg)
}

pub fn run(args: LoadArgs) -> Result<()> {
    // Everything that can be checked without touching the kernel is checked
    // first, so a bad input never leaves a half-applied state behind.
    let cfg = build_config(args.config.as_deref(), &args.addresses, &args.forward)?;
    // Each interface once, in the order given.
    let mut ifaces: Vec<String> = Vec::new();
    for i in &args.ifaces {
        if !ifaces.contains(i) {
            ifaces.push(i.clone());
        }
    }
    for i in &ifaces {
        ifindex(i)?;
    }
    require_root("dnsfast load")?;
    crate::kernel::check_running_kernel()?;
    let rt = runtime(if args.no_forward {
        1
    } else {
        cfg.forward.worker_count()
    })?;
    // Listeners are bound before the kernel is touched, so a taken port
    // fails the command with nothing loaded.
    let mut forwarder = if args.no_forward {
        None
    } else {
        let _guard = rt.enter();
        Some(Forwarder::bind(
            &cfg.forward,
            &cfg.patterns,
            cfg.derived.as_ref(),
        )?)
    };
    raise_memlock();
    ensure_bpffs(&args.pin_dir)?;
    let pins = PinDir::create(&args.pin_dir)?;

    // The kernel answer cache mirrors the forwarder's: same capacity, and
    // nothing without a forwarder to fill it.
    let answer_cache = match &forwarder {
        Some(_) => u32::try_from(cfg.forward.cache.size).unwrap_or(u32::MAX),
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
            .map_err(|_| anyhow::anyhow!("the loader thread panicked"))
    })??;
    apply(&mut dp, &cfg)?;
    if let Some(f) = &forwarder {
        if answer_cache > 0 {
            for a in &cfg.forward.listen {
                dp.add_listen_addr(*a)?;
            }
            let map = dp.take_answer_map()?;
            let _ = f.resolver.kernel_cache.set(KernelCache::new(map));
        }
    }
    for i in &ifaces {
        let mode = xdp_mode(args.mode, i);
        dp.attach(i, mode)?;
        info!("attached to {i} in {mode:?} mode");
    }
    dp.pin_maps(&pins.dir)?;
    dp.pin_program(&pins.dir)?;
    if let Some(f) = &mut forwarder {
        let _guard = rt.enter();
        f.start();
    }
    info!(
        "serving: {} pattern(s), ports {:?}, maps pinned in {}",
        cfg.patterns.len(),
        cfg.xdp.ports,
        pins.dir.display()
    );

    #[cfg(feature = "ebpf-log")]
    if let Some(logger) = dp.logger.take() {
        forward_ebpf_logs(logger);
    }
    let result = rt.block_on(serve_until_signal(forwarder.as_mut()));
    if let Some(f) = &forwarder {
        info!("{}", f.summary());
    }
    drop(rt); // stops the forwarder's tasks and closes its sockets
    info!("detaching and removing pins");
    drop(dp); // detaches every link and closes the program
    drop(pins);
    result
}

/// A runtime with `threads` workers (the forwarder's UDP sockets each get
/// one to themselves when the kernel spreads load evenly).
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Serves until SIGINT/SIGTERM; an error if the forwarder fails first.
pub async fn serve_until_signal(forwarder: Option<&mut Forwarder>) -> Result<()> {
    let run = async {
        match forwarder {
            Some(f) => f.run().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        sig = wait_for_shutdown() => {
            info!("{}: shutting down", sig?);
            Ok(())
        }
        r = run => r.context("the forwarder stopped"),
    }
}

/// Writes config, server addresses and patterns into freshly loaded maps.
pub fn apply(dp: &mut Dataplane, cfg: &Config) -> Result<()> {
    let mut xc = XdpConfig::default();
    if cfg.xdp.ports.len() > MAX_PORTS {
        bail!("at most {MAX_PORTS} DNS ports");
    }
    xc.ports = [0; MAX_PORTS];
    xc.ports[..cfg.xdp.ports.len()].copy_from_slice(&cfg.xdp.ports);
    xc.filter_dst = u32::from(!cfg.xdp.server_addrs.is_empty());
    for a in &cfg.xdp.server_addrs {
        dp.add_server_addr(&addr_key(*a))?;
    }
    if let Some(d) = &cfg.derived {
        for t in &d.tlds {
            dp.insert_tld(t)?;
        }
    }
    for (p, action) in cfg.patterns.iter() {
        dp.insert_pattern(p, action)?;
    }
    dp.set_config(&xc)?;
    Ok(())
}

pub fn addr_key(a: IpAddr) -> AddrKey {
    let mut k = AddrKey::default();
    match a {
        IpAddr::V4(v4) => {
            k.family = FAMILY_V4;
            k.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            k.family = FAMILY_V6;
            k.addr = v6.octets();
        }
    }
    k
}

fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| anyhow::anyhow!("no such interface: {iface}"))
}

fn xdp_mode(mode: Mode, iface: &str) -> XdpMode {
    match mode {
        Mode::Native => XdpMode::Driver,
        Mode::Skb => XdpMode::Skb,
        Mode::Auto => auto_mode(iface),
    }
}

/// Physical NICs have a backing device in sysfs; veths, bridges and tunnels
/// do not, and on a veth native XDP_TX only delivers if the peer runs XDP
/// too, which a pod's end never does. sysfs shows the network namespace it
/// was mounted in, so it is trusted only when its ifindex agrees with ours;
/// otherwise SKB mode, which works on every device, is the safe choice.
fn auto_mode(iface: &str) -> XdpMode {
    let dir = Path::new("/sys/class/net").join(iface);
    let sysfs_index = std::fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match (sysfs_index, ifindex(iface).ok()) {
        (Some(a), Some(b)) if a == b => {
            if dir.join("device").exists() {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            }
        }
        _ => {
            info!("{iface}: sysfs belongs to another network namespace; using SKB mode");
            XdpMode::Skb
        }
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Newer ones use
/// memcg, and some sandboxes refuse the raise, so failure is only logged.
fn raise_memlock() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        debug!("could not raise RLIMIT_MEMLOCK ({e}); fine on kernels >= 5.11");
    }
}

/// Mounts bpffs on the pin directory's bpffs root if it is not there yet.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(()); // the caller chose its own bpffs
    }
    let fs = nix::sys::statfs::statfs(root)
        .with_context(|| format!("checking the filesystem at {}", root.display()))?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    info!("mounting bpffs at {}", root.display());
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", root.display()))
}

/// The pin directory; removes what it pinned when dropped.
struct PinDir {
    dir: PathBuf,
}

impl PinDir {
    fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            let busy = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_some();
            if busy {
                bail!(
                    "{} already holds pins: another dnsfast agent is running, or one was killed. \
                     If none runs, remove them with `rm -r {}`",
                    dir.display(),
                    dir.display()
                );
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let names = crate::bpf::PINNED_MAPS
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .chain([crate::bpf::PINNED_PROG.to_string()]);
        for name in names {
            let p = self.dir.join(name);
            if p.exists() {
                if let Err(e) = std::fs::remove_file(&p) {
                    warn!("removing pin {}: {e}", p.display());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            warn!("removing {}: {e}", self.dir.display());
        }
    }
}

/// Copies the XDP program's aya-log records into the agent's log, from a
/// thread of its own that sleeps in poll(2) until the ring has data.
#[cfg(feature = "ebpf-log")]
fn forward_ebpf_logs(mut logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    std::thread::spawn(move || loop {
        {
            let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, PollTimeout::from(1000u16)) {
                warn!("eBPF log ring: {e}");
                return;
            }
        }
        logger.flush();
    });
}

async fn wait_for_shutdown() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

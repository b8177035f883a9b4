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
    bpf::Dataplane,
    config::Config,
    dnsmasq,
    forward::{settings::parse_listen, Forwarder},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Interface to attach to, or a glob (`veth*`, `cali*`, `lxc*`: `*`
    /// and `?`); repeat for several. Interfaces that match a glob later (a
    /// new pod's veth) are attached as they appear.
    #[arg(long = "iface", required = true, value_name = "IFACE|GLOB")]
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
    /// On SIGTERM/SIGINT leave the program attached and the maps pinned
    /// (links pinned in PIN_DIR/links), for an upgrade without a gap: the
    /// next `dnsfast load` adopts them in place. Without it, exit detaches
    /// everything and DNS takes the normal path.
    #[arg(long)]
    pub keep_attached: bool,
    /// Serve Prometheus /metrics, /health and /ready over HTTP on ADDR
    /// (e.g. 127.0.0.1:9253). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
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
    crate::agent::run(args)
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

/// SIGTERM and SIGINT, caught from the moment this is created: create it
/// before touching the kernel, so a signal that comes early still takes
/// the clean way out (detach, unpin).
pub struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Must run inside the runtime (`rt.enter()`).
    pub fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Serves until SIGINT/SIGTERM; an error if the forwarder fails first.
pub async fn serve_until_signal(
    shutdown: &mut Shutdown,
    forwarder: Option<&mut Forwarder>,
) -> Result<()> {
    let run = async {
        match forwarder {
            Some(f) => f.run().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        sig = shutdown.wait() => {
            info!("{sig}: shutting down");
            Ok(())
        }
        r = run => r.context("the forwarder stopped"),
    }
}

/// The XDP program's settings and server addresses from `cfg`.
pub fn apply_xdp(dp: &mut Dataplane, cfg: &Config) -> Result<()> {
    let mut xc = XdpConfig::default();
    if cfg.xdp.ports.len() > MAX_PORTS {
        bail!("at most {MAX_PORTS} DNS ports");
    }
    xc.ports = [0; MAX_PORTS];
    xc.ports[..cfg.xdp.ports.len()].copy_from_slice(&cfg.xdp.ports);
    xc.filter_dst = u32::from(!cfg.xdp.server_addrs.is_empty());
    let addrs: Vec<AddrKey> = cfg.xdp.server_addrs.iter().map(|a| addr_key(*a)).collect();
    dp.set_xdp(&xc, &addrs)
}

/// The TLD labels of the auto rules (none without auto mode).
pub fn tlds_of(cfg: &Config) -> std::collections::BTreeSet<String> {
    cfg.derived
        .as_ref()
        .map(|d| d.tlds.clone())
        .unwrap_or_default()
}

/// Writes settings, server addresses, TLDs and patterns into the maps.
pub fn apply(dp: &mut Dataplane, cfg: &Config) -> Result<()> {
    dp.reconcile(&crate::maps::rules_of(&cfg.patterns), &tlds_of(cfg))?;
    apply_xdp(dp, cfg)
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

pub fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| anyhow::anyhow!("no such interface: {iface}"))
}

pub fn xdp_mode(mode: Mode, iface: &str) -> XdpMode {
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
pub fn raise_memlock() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        debug!("could not raise RLIMIT_MEMLOCK ({e}); fine on kernels >= 5.11");
    }
}

/// Mounts bpffs on the pin directory's bpffs root if it is not there yet.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
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

/// The pin directory; removes what it pinned when dropped, unless told
/// to keep it.
pub struct PinDir {
    pub dir: PathBuf,
    keep: bool,
}

impl PinDir {
    /// Readies `dir` for this agent's pins. The caller has made sure no
    /// agent runs there. Pins left by a killed agent are stale (its links
    /// died with it, so nothing was attached) and are removed; pins kept
    /// with `--keep-attached` (`adopting`) stay until the new program has
    /// taken over the links.
    pub fn prepare(dir: &Path, adopting: bool) -> Result<Self> {
        if dir.exists() && !adopting {
            let stale: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !stale.is_empty() {
                warn!(
                    "{}: removing stale pins of an agent that did not exit cleanly ({});                      nothing of it was attached",
                    dir.display(),
                    stale.join(", ")
                );
                remove_pins(dir);
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: false,
        })
    }

    /// Removes the previous agent's map and program pins (after adoption),
    /// so this agent's can take their names.
    pub fn remove_old(&self) {
        remove_pins(&self.dir);
        let _ = std::fs::create_dir_all(&self.dir);
    }

    /// Leaves everything pinned at drop (`--keep-attached`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

/// Removes the pins dnsfast makes under `dir`, and `dir` if that leaves it
/// empty. Anything else there is left alone.
pub fn remove_pins(dir: &Path) {
    let names = crate::bpf::PINNED_MAPS
        .iter()
        .map(|m| m.to_ascii_lowercase())
        .chain([crate::bpf::PINNED_PROG.to_string()]);
    for name in names {
        let p = dir.join(name);
        if p.exists() {
            if let Err(e) = std::fs::remove_file(&p) {
                warn!("removing pin {}: {e}", p.display());
            }
        }
    }
    let links = dir.join(crate::agent::ifaces::LINKS_DIR);
    if let Ok(rd) = std::fs::read_dir(&links) {
        for e in rd.flatten() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                warn!("removing pin {}: {err}", e.path().display());
            }
        }
        let _ = std::fs::remove_dir(&links);
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("removing {}: {e}", dir.display());
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.keep {
            remove_pins(&self.dir);
        }
    }
}

/// Copies the XDP program's aya-log records into the agent's log, from a
/// thread of its own that sleeps in poll(2) until the ring has data.
#[cfg(feature = "ebpf-log")]
pub fn forward_ebpf_logs(mut logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
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

//! The command-line flags that override the config file: the
//! forwarder's (shared by `load`, `serve` and `check-config`), in
//! dnsmasq's spelling, so kube-dns's flags paste in unchanged. A plain
//! value here, so that a reload can rebuild the config from the same
//! flags without reaching back into the CLI.

use std::path::PathBuf;

use clap::Args;

/// The forwarder's flags, shared by `load` and `serve`. The dnsmasq ones
/// (--server, --cache-size, --no-negcache, --no-resolv, --log-queries) take
/// kube-dns's values unchanged.
#[derive(Args, Debug, Default, Clone)]
pub struct ForwardFlags {
    /// Address to answer DNS on, over UDP and TCP: IP:PORT, [IPv6]:PORT, or
    /// IP for port 53. Repeat for several; replaces forward.listen from the
    /// config. Default 127.0.0.1:53.
    #[arg(long = "listen", value_name = "ADDR")]
    pub(crate) listen: Vec<String>,
    /// Upstream, dnsmasq style: IP[#PORT] for every name,
    /// /ZONE/[ZONE/…]IP[#PORT] for names under the zones (longest zone
    /// wins), /ZONE/# for "the default upstreams". Repeat to add upstreams,
    /// tried in order.
    #[arg(long = "server", value_name = "[/ZONE/]IP[#PORT]")]
    pub(crate) servers: Vec<String>,
    /// Answer cache capacity in entries (0 turns it off). Default 10000.
    #[arg(long = "cache-size", value_name = "N")]
    pub(crate) cache_size: Option<usize>,
    /// Do not cache NXDOMAIN or NODATA (the default; accepted for dnsmasq
    /// compatibility, and overrides cache.neg-cache = true).
    #[arg(long)]
    pub(crate) no_negcache: bool,
    /// Do not take default upstreams from /etc/resolv.conf.
    #[arg(long)]
    pub(crate) no_resolv: bool,
    /// Log one line per query: client, name, type, route, upstream, rcode,
    /// cache outcome and latency.
    #[arg(long)]
    pub(crate) log_queries: bool,
    /// Queries a second one client address may send the forwarder through
    /// the XDP program; the excess is dropped in the kernel. 0: no bound
    /// (a load generator is one client). Replaces xdp.client-qps; default
    /// 5000.
    #[arg(long = "client-qps", value_name = "N")]
    pub(crate) client_qps: Option<u32>,
}

/// `dnsfast load`'s Kubernetes flag.
#[derive(Args, Debug, Default, Clone)]
pub struct KubeFlags {
    /// Learn the cluster's Namespaces and Services from the Kubernetes API
    /// through this kubeconfig (outside a cluster), and decide the cluster
    /// domain exactly. In a pod, `[kubernetes] enabled = true` uses the
    /// service account instead.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

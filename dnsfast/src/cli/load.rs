//! `dnsfast load`: its flags, handed to the agent as plain options.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{
    agent,
    config::{ForwardFlags, KubeFlags},
    dataplane::attach::AttachMode,
    paths::PIN_DIR,
};

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Interface to attach to, or a glob (`veth*`, `cali*`, `lxc*`: `*`
    /// and `?`); repeat for several. Interfaces that match a glob later (a
    /// new pod's veth) are attached as they appear.
    #[arg(long = "iface", required = true, value_name = "IFACE|GLOB")]
    pub(crate) ifaces: Vec<String>,
    /// TOML config file (see `dnsfast example-config`).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// dnsmasq-style NXDOMAIN suffixes, e.g. --address=/com.svc.cluster.local/;
    /// repeatable, several domains per flag as in dnsmasq.
    #[arg(long = "address", value_name = "/DOMAIN[/DOMAIN…]/")]
    pub(crate) addresses: Vec<String>,
    /// XDP attach mode. `auto` picks native on physical NICs and SKB
    /// (generic) on virtual ones such as veths, where native XDP_TX would
    /// need a program on the peer.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub(crate) mode: AttachMode,
    /// Where the maps are pinned, for the CLI and bpftool.
    #[arg(long, value_name = "DIR", default_value = PIN_DIR)]
    pub(crate) pin_dir: PathBuf,
    /// Run only the XDP program; no DNS forwarder in user space.
    #[arg(long)]
    pub(crate) no_forward: bool,
    /// On SIGTERM/SIGINT leave the program attached and the maps pinned
    /// (links pinned in PIN_DIR/links), for an upgrade without a gap: the
    /// next `dnsfast load` adopts them in place. Without it, exit detaches
    /// everything and DNS takes the normal path.
    #[arg(long)]
    pub(crate) keep_attached: bool,
    /// Serve OpenMetrics /metrics, /health and /ready over HTTP on ADDR
    /// (e.g. 127.0.0.1:9253). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) forward: ForwardFlags,
    #[command(flatten)]
    pub(crate) kube: KubeFlags,
}

impl From<LoadArgs> for agent::Options {
    fn from(a: LoadArgs) -> Self {
        Self {
            ifaces: a.ifaces,
            config: a.config,
            addresses: a.addresses,
            mode: a.mode,
            pin_dir: a.pin_dir,
            no_forward: a.no_forward,
            keep_attached: a.keep_attached,
            metrics: a.metrics,
            forward: a.forward,
            kube: a.kube,
        }
    }
}

pub fn run(args: LoadArgs) -> Result<()> {
    agent::run(args.into())
}

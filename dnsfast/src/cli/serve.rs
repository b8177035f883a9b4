//! `dnsfast serve`: the forwarder alone, with no XDP: for hosts without
//! eBPF, and for development as an ordinary user on a high port.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use log::info;

use crate::{
    agent::{
        runtime::{runtime, serve_until_signal, Shutdown},
        stats::forwarder_stats,
    },
    config::{self, ForwardFlags, KubeFlags},
    forward::Forwarder,
    rules,
};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (see `dnsfast example-config`).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// dnsmasq-style NXDOMAIN suffixes, answered here instead of in the
    /// kernel, e.g. --address=/com.svc.cluster.local/; repeatable.
    #[arg(long = "address", value_name = "/DOMAIN[/DOMAIN…]/")]
    pub(crate) addresses: Vec<String>,
    #[command(flatten)]
    pub(crate) forward: ForwardFlags,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let cfg = config::build(
        args.config.as_deref(),
        &args.addresses,
        &args.forward,
        &KubeFlags::default(),
    )?;
    let rt = runtime(cfg.forward.worker_count())?;
    let mut shutdown = {
        let _guard = rt.enter();
        Shutdown::install()?
    };
    let mut forwarder = {
        let _guard = rt.enter();
        let mut f = Forwarder::bind(
            &cfg.forward,
            &rules::rules_of(&cfg.patterns),
            cfg.derived.as_ref(),
            &mut Default::default(),
        )?;
        f.start();
        f
    };
    info!("serving: {} block/allow pattern(s)", cfg.patterns.len());
    let result = rt.block_on(serve_until_signal(&mut shutdown, Some(&mut forwarder)));
    info!("{}", forwarder_stats(&forwarder.resolver).summary());
    result
}

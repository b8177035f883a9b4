//! Where and how the program attaches: the attach mode (`--mode`), an
//! interface's index, and the process limits loading needs.

use std::path::Path;

use anyhow::Result;

use aya::programs::XdpMode;
use clap::ValueEnum;
use log::{debug, info};

/// `--mode`: XDP attach mode. `auto` picks native on physical NICs and SKB
/// (generic) on virtual ones such as veths, where native XDP_TX would need
/// a program on the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum AttachMode {
    Auto,
    Native,
    Skb,
}

pub(crate) fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| anyhow::anyhow!("no such interface: {iface}"))
}

pub(crate) fn xdp_mode(mode: AttachMode, iface: &str) -> XdpMode {
    match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
        AttachMode::Auto => auto_mode(iface),
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
pub(crate) fn raise_memlock() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        debug!("could not raise RLIMIT_MEMLOCK ({e}); fine on kernels >= 5.11");
    }
}

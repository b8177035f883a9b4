//! The kernel's link announcements (rtnetlink `RTMGRP_LINK`), as a
//! wake-up for `ifaces::sync`: a new pod's veth is attached as soon as it
//! exists, with no polling.
//!
//! Through `nix`, not `rtnetlink`: no message is parsed (the messages only
//! wake `sync`, which reads the interface list itself), and one `bind` and
//! a blocking `recv` do not need a netlink stack (docs/dependencies.md).

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
};

use anyhow::{Context, Result};
use log::warn;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::state::Agent;

/// `RTMGRP_LINK`: the multicast group that announces links coming and going.
const RTMGRP_LINK: u32 = 1;

/// Re-syncs the interfaces whenever the kernel announces a link change
/// (RTM_NEWLINK/RTM_DELLINK on an rtnetlink socket): a new pod's veth is
/// attached as soon as it exists, with no polling. The messages are only a
/// wake-up; `sync` reads the current list itself. Runs on a thread of its
/// own, blocked in recv(2).
pub(crate) fn watch(agent: Arc<Agent>) -> Result<()> {
    let fd: OwnedFd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .context("opening an rtnetlink socket")?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))
        .context("subscribing to link changes")?;
    std::thread::Builder::new()
        .name("link-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    // The kernel dropped messages: a full sync covers them.
                    Ok(_) | Err(nix::errno::Errno::ENOBUFS) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        warn!("link watch stopped: {e}; new interfaces are no longer attached");
                        return;
                    }
                }
                // Drain what else is queued, then sync once.
                while recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_ok() {}
                if let Err(e) = agent.sync_ifaces() {
                    warn!("interface sync: {e:#}");
                }
            }
        })
        .context("starting the link watch thread")?;
    Ok(())
}

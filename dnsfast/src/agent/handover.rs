//! Handing a running agent's place to a new one without a gap (a
//! DaemonSet's surge update: the new pod starts beside the old one).
//!
//! Over the old agent's control socket:
//!
//! 1. new → old: `handover`.
//! 2. old: pins its XDP links (as `--keep-attached` does) and sends back
//!    one message: a JSON line naming its listening sockets, with the
//!    sockets themselves attached (`SCM_RIGHTS`). It keeps serving.
//! 3. new: loads and fills its own program and maps, warms its kernel
//!    answer cache from the old one's, builds its forwarder on the very
//!    same sockets, adopts the links (`BPF_LINK_UPDATE`: its program
//!    replaces the old one on each interface in one step), pins its maps,
//!    then sends `done`.
//! 3. old: stops reading and accepting, answers what it has already
//!    taken, and idles until it is stopped (its pod is deleted next); it
//!    removes nothing: the pins and the sockets are the new agent's now.
//!
//! If the new agent goes away before `done`, the old one takes its links
//! back and carries on.
//!
//! Why the sockets are handed over rather than bound again with
//! SO_REUSEPORT: a datagram sits in one socket's queue, and a socket that
//! leaves a reuseport group drops its queue when it closes, while the
//! group's hash sends each client to a different socket the moment the
//! group changes. Passing the sockets keeps the queues: both agents read
//! the same sockets for a moment, each query is taken by exactly one, and
//! nothing is queued anywhere that closes.

use std::{
    io::{BufRead, BufReader, IoSlice, IoSliceMut, Write},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use log::{info, warn};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::{
    ifaces,
    state::{poisoned, Agent},
};
use crate::forward::{Inherited, Proto};

/// Most sockets one agent hands over (listen addresses × workers, TCP,
/// metrics).
const MAX_FDS: usize = 250;
/// How long the old agent waits for the new one to finish taking over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(120);

#[derive(Serialize, Deserialize)]
struct Offer {
    ok: bool,
    pid: u32,
    /// One entry per attached socket, in order.
    sockets: Vec<(SocketAddr, Proto)>,
    #[serde(default)]
    error: Option<String>,
}

/// The new agent's side, while the old one still serves.
pub(crate) struct Takeover {
    stream: UnixStream,
    pub(crate) old_pid: u32,
}

/// Asks the agent running on `pin_dir` to hand over: its sockets and its
/// links. `None` when no agent runs there.
pub(crate) fn begin(pin_dir: &Path) -> Result<Option<(Takeover, Inherited)>> {
    let Some(mut stream) = super::client::connect(pin_dir)? else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"handover\n")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the running agent's sockets")?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().context("reading the handed-over sockets")? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors in
                // this process for us; nothing else owns them.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let offer: Offer = match serde_json::from_str(text.trim()) {
        Ok(o) => o,
        Err(_) => bail!(
            "another dnsfast agent runs with the pins in {}, and it cannot hand over (an older \
             version?): stop it first, or use another --pin-dir",
            pin_dir.display()
        ),
    };
    if !offer.ok {
        bail!(
            "the running agent (pid {}) refused to hand over: {}",
            offer.pid,
            offer.error.unwrap_or_default()
        );
    }
    if offer.sockets.len() != fds.len() {
        bail!(
            "the running agent named {} sockets and sent {}",
            offer.sockets.len(),
            fds.len()
        );
    }
    info!(
        "taking over from the running agent (pid {}): {} socket(s) handed over",
        offer.pid,
        fds.len()
    );
    let sockets = offer
        .sockets
        .into_iter()
        .zip(fds)
        .map(|((a, p), fd)| (a, p, fd))
        .collect();
    Ok(Some((
        Takeover {
            stream,
            old_pid: offer.pid,
        },
        Inherited { sockets },
    )))
}

impl Takeover {
    /// Tells the old agent that this one serves now.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.stream
            .write_all(b"done\n")
            .context("telling the previous agent to stand down")?;
        info!("took over from pid {}; it stops serving now", self.old_pid);
        Ok(())
    }
}

/// The old agent's side, on a control connection that asked `handover`.
pub(crate) fn serve(agent: &Arc<Agent>, stream: UnixStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    let offer = match offer(agent) {
        Ok(o) => o,
        Err(e) => {
            let msg = serde_json::to_string(&Offer {
                ok: false,
                pid: agent.pid,
                sockets: vec![],
                error: Some(format!("{e:#}")),
            })?;
            let _ = (&stream).write_all(msg.as_bytes());
            return Err(e);
        }
    };
    let (meta, fds) = offer;
    let text = serde_json::to_string(&meta)? + "\n";
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    );
    if let Err(e) = sent {
        take_back(agent);
        bail!("sending the sockets: {e}");
    }
    drop(fds);
    stream.set_read_timeout(Some(TAKEOVER_WAIT))?;
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    if read.is_ok() && line.trim() == "done" {
        info!("handed over: the new agent serves on the same sockets and links; stopping");
        agent.handed_over.store(true, Ordering::SeqCst);
        agent.stop.notify_one();
        return Ok(());
    }
    warn!("the new agent went away before taking over: keeping the links and serving on");
    take_back(agent);
    Ok(())
}

/// Pins the links for the new agent and lists the sockets to send.
fn offer(agent: &Arc<Agent>) -> Result<(Offer, Vec<OwnedFd>)> {
    if agent.handed_over.load(Ordering::SeqCst) {
        bail!("this agent has already handed over");
    }
    let mut sockets = Vec::new();
    let mut fds = Vec::new();
    for (a, p, fd) in agent.handover_sockets() {
        sockets.push((a, p));
        fds.push(fd);
    }
    if fds.len() > MAX_FDS {
        bail!(
            "{} sockets, more than {MAX_FDS} can be handed over",
            fds.len()
        );
    }
    // From here until `done` (or a failure), interface changes are left
    // to the new agent: attaching now would race its adoption.
    agent.handing_over.store(true, Ordering::SeqCst);
    let mut dp = agent.dp.lock().map_err(poisoned)?;
    let mut ifs = agent.ifaces.lock().map_err(poisoned)?;
    ifaces::keep_all(&mut dp, &mut ifs, &agent.pin_dir)?;
    Ok((
        Offer {
            ok: true,
            pid: agent.pid,
            sockets,
            error: None,
        },
        fds,
    ))
}

/// After a failed handover: the links are this agent's again.
fn take_back(agent: &Arc<Agent>) {
    let r = (|| -> Result<usize> {
        let mut dp = agent.dp.lock().map_err(poisoned)?;
        let mut ifs = agent.ifaces.lock().map_err(poisoned)?;
        ifaces::adopt_kept(&mut dp, &mut ifs, &agent.pin_dir)
    })();
    agent.handing_over.store(false, Ordering::SeqCst);
    match r {
        Ok(n) => info!("took back {n} link(s)"),
        Err(e) => warn!("taking the links back: {e:#}"),
    }
    if let Err(e) = agent.sync_ifaces() {
        warn!("{e:#}");
    }
}

/// Errors a caller may only log.
pub(crate) fn log_err(r: Result<()>) {
    if let Err(e) = r {
        warn!("handover: {}", anyhow!(e));
    }
}

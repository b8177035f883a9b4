//! When to reload: on SIGHUP, and when the config file changes. The file's
//! directory is watched with inotify rather than the file, because a
//! Kubernetes ConfigMap volume updates by swapping its `..data` symlink:
//! the file's own inode never changes.
//!
//! Through `nix`, not `notify`: one watch whose events are only a wake-up
//! (the file's bytes decide whether anything changed) needs no backends
//! or debouncer (docs/dependencies.md).

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use log::{debug, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc::{unbounded_channel, UnboundedReceiver},
};

use super::state::Agent;

/// Editors and kubelet write in several steps; changes closer together
/// than this make one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// SIGHUP, caught from now on (call inside the runtime, before anything
/// can send it: its default action ends the process).
pub(crate) fn hangup() -> Result<Signal> {
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

pub(crate) async fn watch(agent: Arc<Agent>, mut hup: Signal) -> Result<()> {
    let mut changes = match &agent.inputs.config {
        Some(file) => Some(watch_dir(file)?),
        None => None,
    };
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            r = changed(changes.as_mut()) => {
                r?;
                tokio::time::sleep(SETTLE).await;
                if let Some(rx) = changes.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
                if !file_differs(&agent) {
                    debug!("config directory changed, the file did not");
                    continue;
                }
                "the config file changed"
            }
        };
        let a = agent.clone();
        // The outcome is logged and recorded by `reload` itself.
        let _ = tokio::task::spawn_blocking(move || a.reload(why)).await;
    }
}

/// Events in the file's directory, from a thread blocked in read(2) on
/// an inotify descriptor.
fn watch_dir(file: &Path) -> Result<UnboundedReceiver<()>> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let ino = Inotify::init(InitFlags::IN_CLOEXEC).context("starting inotify")?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY,
    )
    .with_context(|| format!("watching {} for config changes", dir.display()))?;
    let (tx, rx) = unbounded_channel();
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || loop {
            match ino.read_events() {
                Ok(_) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!("config watch stopped: {e}; SIGHUP still reloads");
                    return;
                }
            }
        })
        .context("starting the config watch thread")?;
    Ok(rx)
}

/// Resolves at the next change (never without a file to watch).
async fn changed(rx: Option<&mut UnboundedReceiver<()>>) -> Result<()> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(()) => Ok(()),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Whether the file (through any symlinks) now differs from what was
/// applied. An unreadable file counts as a change: the reload then says why.
fn file_differs(agent: &Agent) -> bool {
    let Some(path) = &agent.inputs.config else {
        return false;
    };
    let now = std::fs::read(path).ok();
    match agent.applied.lock() {
        Ok(a) => now.is_none() || a.file != now,
        Err(_) => {
            warn!("config watcher: the agent lock is poisoned");
            false
        }
    }
}

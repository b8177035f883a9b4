//! The agent's control socket: the CLI asks a running agent for its
//! status and counters, tells it about pattern changes, and asks it to
//! reload, detach or exit. One request line in, one JSON line out.
//!
//! The socket is a file (not an abstract socket) so that it is reachable
//! from any network namespace, and its name follows the pin directory so
//! that agents with different `--pin-dir`s never meet.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use log::{info, warn};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::UnixListener,
};

use super::{runtime::AcceptBackoff, state::Agent, stats};
use crate::paths;

/// The control socket, removed when dropped.
pub(crate) struct Socket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
    /// The file's inode, so that a socket that replaced it (the agent
    /// that took over) is not removed at drop.
    inode: u64,
}

impl Socket {
    /// Binds the socket (root only: it can unload the program). A stale
    /// file from a killed agent is replaced; a live agent was ruled out by
    /// the caller.
    pub(crate) fn bind(pin_dir: &Path) -> Result<Self> {
        let path = paths::control_socket(pin_dir);
        std::fs::create_dir_all(paths::RUN_DIR)
            .with_context(|| format!("creating {}", paths::RUN_DIR))?;
        let _ = std::fs::remove_file(&path);
        // Created 0600, not chmod-ed after: between the two, anyone could
        // have connected, and the socket can unload the program.
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(&path);
        nix::sys::stat::umask(umask);
        let listener =
            bound.with_context(|| format!("binding the control socket {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("making the control socket non-blocking")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        let inode = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
        Ok(Self {
            path,
            listener: Some(listener),
            inode,
        })
    }

    /// The listener, for `serve` (call inside the runtime).
    pub(crate) fn take_listener(&mut self) -> Result<Option<UnixListener>> {
        self.listener
            .take()
            .map(|l| UnixListener::from_std(l).context("registering the control socket"))
            .transpose()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Answers requests until the runtime ends.
pub(crate) async fn serve(listener: UnixListener, agent: Arc<Agent>) -> Result<()> {
    let mut backoff = AcceptBackoff::new("the control socket");
    loop {
        let (stream, _) = backoff.next(|| listener.accept()).await;
        let agent = agent.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = TokioBufReader::new(rd);
            // One short line; a client that sends more is cut off.
            let read = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0 && n < 4096) {
                return;
            }
            if line.trim() == "handover" {
                // A new agent takes this one's place: the sockets go over
                // this connection as ancillary data, on a plain socket.
                let std = rd
                    .into_inner()
                    .reunite(wr)
                    .ok()
                    .and_then(|s| s.into_std().ok());
                if let Some(std) = std {
                    let _ = tokio::task::spawn_blocking(move || {
                        super::handover::log_err(super::handover::serve(&agent, std))
                    })
                    .await;
                }
                return;
            }
            if line.trim() == "watch" {
                // The connection stays open: events until the client leaves.
                if let Ok(stream) = rd.into_inner().reunite(wr) {
                    if let Err(e) =
                        super::events::serve_watcher(agent.events.as_ref(), &agent.dp, stream).await
                    {
                        warn!("watch: {e:#}");
                    }
                }
                return;
            }
            let reply = handle(&agent, line.trim()).await;
            let mut out = reply.to_string();
            out.push('\n');
            let _ = wr.write_all(out.as_bytes()).await;
        });
    }
}

async fn handle(agent: &Arc<Agent>, req: &str) -> Value {
    let (cmd, arg) = req.split_once(' ').unwrap_or((req, ""));
    if cmd == "unload" {
        info!("unload requested over the control socket");
        agent.request_stop();
        return json!({ "ok": true });
    }
    // The rest take locks and make system calls: off the runtime's threads.
    let (a, cmd, arg) = (agent.clone(), cmd.to_string(), arg.to_string());
    match tokio::task::spawn_blocking(move || handle_blocking(&a, &cmd, &arg)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => json!({ "ok": false, "error": format!("{e:#}") }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    }
}

fn handle_blocking(a: &Agent, cmd: &str, arg: &str) -> Result<Value> {
    Ok(match cmd {
        "status" => ok(serde_json::to_value(stats::status(a))?),
        "stats" => ok(serde_json::to_value(stats::stats(a))?),
        "resync" => json!({ "ok": true, "rules": a.resync_rules()? }),
        "reload" => json!({ "ok": true, "summary": a.reload("a control request")? }),
        "flush" => json!({ "ok": true, "summary": a.flush_cache(arg)? }),
        "detach" => {
            a.detach_iface(arg)?;
            json!({ "ok": true })
        }
        other => {
            warn!("control socket: unknown request '{other}'");
            bail!("unknown request '{other}'")
        }
    })
}

/// `v` with `"ok": true` added.
fn ok(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("ok".into(), json!(true));
    }
    v
}

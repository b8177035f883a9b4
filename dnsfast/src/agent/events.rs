//! `dnsfast watch`: the kernel's query events, streamed to whoever asks.
//!
//! The watch program writes one event per decided query into the `EVENTS`
//! ring, but only while it sits in the jump table: the agent puts it there
//! when the first watcher connects and takes it out when the last one
//! leaves, so nobody watching costs one failed tail call. A reader thread
//! decodes the ring into JSON lines on a broadcast channel; each watcher's
//! connection copies them out. A slow watcher skips events rather than
//! holding anyone up.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use dnsfast_common::{
    pattern::{key_name, Action},
    suffix::name_key,
    WatchEvent, FAMILY_V6, VERDICT_ALLOWED, VERDICT_CACHE, VERDICT_NXDOMAIN, VERDICT_PASS,
};
use hickory_proto::rr::RecordType;
use log::{info, warn};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::broadcast,
};

use crate::dataplane::Dataplane;
use crate::forward::kernel_cache::monotonic_ns;

/// Events buffered per watcher before it starts skipping.
const BACKLOG: usize = 4096;

pub(crate) struct Events {
    tx: broadcast::Sender<Arc<str>>,
    watchers: Mutex<usize>,
}

impl Events {
    /// Starts the reader thread on the program's event ring.
    pub(crate) fn start(ring: RingBuf<MapData>) -> Result<Self> {
        let (tx, _) = broadcast::channel(BACKLOG);
        let out = tx.clone();
        std::thread::Builder::new()
            .name("watch-ring".into())
            .spawn(move || read_ring(ring, out))
            .context("starting the watch ring reader")?;
        Ok(Self {
            tx,
            watchers: Mutex::new(0),
        })
    }

    pub(crate) fn watchers(&self) -> usize {
        self.watchers.lock().map(|n| *n).unwrap_or(0)
    }
}

fn read_ring(mut ring: RingBuf<MapData>, tx: broadcast::Sender<Arc<str>>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        {
            let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, PollTimeout::from(1000u16)) {
                if e != nix::errno::Errno::EINTR {
                    warn!("watch ring: {e}; watch stops");
                    return;
                }
            }
        }
        while let Some(item) = ring.next() {
            if let Some(e) = WatchEvent::from_bytes(&item) {
                // No receiver is fine: nobody watches right now.
                let _ = tx.send(Arc::from(describe(&e).to_string()));
            }
        }
    }
}

/// An event as JSON: wall-clock time, client, name as asked, type,
/// verdict, and the rule that decided.
pub(crate) fn describe(e: &WatchEvent) -> Value {
    let ago = monotonic_ns().saturating_sub(e.time_ns);
    let wall = SystemTime::now()
        .checked_sub(Duration::from_nanos(ago))
        .unwrap_or(UNIX_EPOCH);
    let ts = wall
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let client = if e.family == FAMILY_V6 {
        Ipv6Addr::from(e.addr).to_string()
    } else {
        Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string()
    };
    let wire = &e.name[..(e.name_len as usize).min(e.name.len())];
    let (pattern, action) = match name_key(wire) {
        Ok((key, _)) if e.rule_len > 0 && (e.rule_len as usize) <= key.len() => (
            Some(key_name(&key[..e.rule_len as usize])),
            // A folded namespace parent is a search suffix like any other.
            Action::from_code(if e.rule_action == dnsfast_common::ACTION_SUFFIX_NS {
                dnsfast_common::ACTION_SUFFIX
            } else {
                e.rule_action
            })
            .map(|a| a.to_string()),
        ),
        _ => (None, None),
    };
    json!({
        "ts": (ts * 1e6).round() / 1e6,
        "client": client,
        "name": dotted(wire),
        "type": RecordType::from(e.qtype as u16).to_string(),
        "verdict": match e.verdict {
            VERDICT_NXDOMAIN => "nxdomain",
            VERDICT_CACHE => "cache",
            VERDICT_PASS => "pass",
            VERDICT_ALLOWED => "allowed",
            _ => "unknown",
        },
        "pattern": pattern,
        "action": action,
    })
}

/// A wire name as text, the client's case kept; bytes outside printable
/// ASCII as `\DDD`, as dig shows them.
fn dotted(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&n) = wire.get(i) {
        if n == 0 {
            break;
        }
        let label = wire.get(i + 1..i + 1 + n as usize).unwrap_or(&[]);
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        out.push('.');
        i += 1 + n as usize;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Streams events to one watcher until it disconnects.
pub(crate) async fn serve_watcher(
    events: Option<&Events>,
    dp: &Mutex<Dataplane>,
    stream: UnixStream,
) -> Result<()> {
    let Some(w) = events else {
        let (_, mut wr) = stream.into_split();
        let _ = wr
            .write_all(b"{\"ok\":false,\"error\":\"the watch ring is not available\"}\n")
            .await;
        return Ok(());
    };
    let mut rx = w.tx.subscribe();
    set_watchers(w, dp, 1)?;
    let (mut rd, mut wr) = stream.into_split();
    // Ends when the watcher goes away; a write error just means it did.
    let _gone: std::io::Result<()> = async {
        wr.write_all(b"{\"ok\":true}\n").await?;
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(line) => {
                        wr.write_all(line.as_bytes()).await?;
                        wr.write_all(b"\n").await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = json!({ "skipped": n }).to_string() + "\n";
                        wr.write_all(note.as_bytes()).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                // The watcher closing its end (or sending anything) ends it.
                n = rd.read(&mut buf) => {
                    if n.unwrap_or(0) == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    set_watchers(w, dp, -1)
}

/// Counts watchers; the first one puts the watch program in the jump
/// table, the last one takes it out.
fn set_watchers(w: &Events, dp: &Mutex<Dataplane>, delta: isize) -> Result<()> {
    let mut n = w
        .watchers
        .lock()
        .map_err(|_| anyhow::anyhow!("watch lock poisoned"))?;
    let before = *n;
    *n = before.saturating_add_signed(delta);
    if (before == 0) != (*n == 0) {
        let on = *n > 0;
        dp.lock()
            .map_err(|_| anyhow::anyhow!("dataplane lock poisoned"))?
            .set_watch(on)?;
        info!(
            "watch {}",
            if on {
                "on: the kernel emits query events"
            } else {
                "off: nobody watches"
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_describe_the_query_and_its_rule() {
        let mut e = WatchEvent {
            time_ns: monotonic_ns(),
            addr: [0; 16],
            family: dnsfast_common::FAMILY_V4,
            qtype: 28,
            verdict: VERDICT_NXDOMAIN,
            rule_len: 0,
            rule_action: Action::Block.code(),
            name_len: 0,
            name: [0; 256],
        };
        e.addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        let wire = dnsfast_common::pattern::to_wire("Api.GitHub.com.svc.cluster.local");
        e.name[..wire.len()].copy_from_slice(&wire);
        e.name_len = wire.len() as u32;
        let (data, len) = dnsfast_common::pattern::Pattern::parse("com.svc.cluster.local")
            .unwrap()
            .key();
        let _ = data;
        e.rule_len = len as u32;
        let v = describe(&e);
        assert_eq!(v["client"], "10.0.0.2");
        assert_eq!(v["name"], "Api.GitHub.com.svc.cluster.local.");
        assert_eq!(v["type"], "AAAA");
        assert_eq!(v["verdict"], "nxdomain");
        assert_eq!(v["pattern"], "com.svc.cluster.local");
        assert_eq!(v["action"], "block");
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            - v["ts"].as_f64().unwrap();
        assert!((0.0..5.0).contains(&age), "{age}");
        assert_eq!(dotted(b"\x03a.b\x01\x07\x00"), "a\\046b.\\007.");
        assert_eq!(dotted(b"\x00"), ".");
    }
}

//! The agent's liveness check asks its own forwarder, through the real
//! listeners, for `health.dnsfast.` in class CH: the resolver answers it
//! itself (no upstream, no cache), so an answer shows that the sockets,
//! the runtime and the resolver all work, whatever the upstreams do.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// The name, in wire form.
const NAME: &[u8] = b"\x06health\x07dnsfast\x00";
/// Class CH: nothing any upstream serves.
pub(crate) const CLASS_CH: u16 = 3;
const TYPE_TXT: u16 = 16;
/// How long the UDP self-query waits for an answer before it is sent
/// again (with the same ID).
const UDP_RESEND: Duration = Duration::from_millis(200);

/// The label-reversed key of the name, to recognise it.
pub(crate) fn key() -> &'static [u8] {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        dnsfast_common::suffix::name_key(NAME)
            .map(|(k, _)| k)
            .unwrap_or_default()
    })
}

fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(NAME);
    q.extend_from_slice(&TYPE_TXT.to_be_bytes());
    q.extend_from_slice(&CLASS_CH.to_be_bytes());
    q
}

/// Where to ask a listener bound to `addr` (a wildcard: its loopback).
fn target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn is_reply(b: &[u8], id: u16) -> bool {
    b.len() >= 12 && b[..2] == id.to_be_bytes() && b[2] & 0x80 != 0
}

/// Asks the listener on `addr` over UDP (sent again every 200 ms), then
/// over TCP, each within `wait`. A TCP connection reset at once counts as
/// an answer: the listener is alive and at its connection bound, which
/// clients do not fix by restarting it.
pub(crate) async fn ask(addr: SocketAddr, wait: Duration) -> Result<()> {
    let to = target(addr);
    let id: u16 = rand::random();
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let udp = async {
        let s = UdpSocket::bind(local).await?;
        s.connect(to).await?;
        let q = query(id);
        let mut buf = [0u8; 512];
        // Sent again every `UDP_RESEND`, as a stub resolver would: one
        // client's flood can fill the listener's receive queue for a
        // moment and drop a datagram, and one lost datagram is not a dead
        // forwarder.
        let mut resend = tokio::time::interval(UDP_RESEND);
        loop {
            tokio::select! {
                _ = resend.tick() => {
                    s.send(&q).await?;
                }
                r = s.recv(&mut buf) => {
                    let n = r?;
                    if is_reply(&buf[..n], id) {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            }
        }
    };
    match timeout(wait, udp).await {
        Ok(r) => r.with_context(|| format!("udp {to}"))?,
        Err(_) => bail!("udp {to}: no answer in {wait:?}"),
    }
    let tcp = async {
        let mut s = TcpStream::connect(to).await?;
        let q = query(id);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await?;
        let n = s.read_u16().await? as usize;
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        if !is_reply(&buf, id) {
            return Err(std::io::Error::other("not our answer"));
        }
        Ok(())
    };
    match timeout(wait, tcp).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("tcp {to}")),
        Err(_) => bail!("tcp {to}: no answer in {wait:?}"),
    }
}

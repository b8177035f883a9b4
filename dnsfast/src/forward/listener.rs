//! Client-facing sockets, bytes only: every message goes to
//! `Resolver::handle`, and what it answers goes back. UDP: one
//! SO_REUSEPORT socket per worker, so the kernel spreads clients over
//! threads without a shared queue; answers that need no upstream are sent
//! from the receive loop, the rest from a task. TCP: length-prefixed
//! messages, pipelined, answered in any order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use log::debug;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, Semaphore},
};

use super::resolver::{Handled, Resolver, Transport};

/// An idle TCP client is closed after this long (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Open TCP connections at most; more wait in the accept queue.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// Queries in flight per TCP connection; a pipelining client waits past it.
const TCP_PIPELINE: usize = 64;

/// Binds `workers` UDP sockets on `addr` that share it through SO_REUSEPORT.
pub(crate) fn bind_udp(addr: SocketAddr, workers: usize) -> Result<Vec<UdpSocket>> {
    (0..workers)
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            UdpSocket::from_std(s.into())
        })
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listening on udp {addr}"))
}

pub(crate) fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .and_then(|s| {
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(1024)?;
            Ok(s)
        })
        .with_context(|| format!("listening on tcp {addr}"))?;
    TcpListener::from_std(s.into()).with_context(|| format!("listening on tcp {addr}"))
}

pub(crate) async fn serve_udp(sock: UdpSocket, r: Arc<Resolver>) -> Result<()> {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(1500);
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // ICMP errors from earlier sends surface here; they concern
            // one client, never the socket.
            Err(e) => {
                debug!("udp receive: {e}");
                continue;
            }
        };
        match r.handle(&buf[..n], peer, Transport::Udp, &mut out) {
            Handled::Answered => send(&sock, &out, peer).await,
            Handled::Ignored => {}
            Handled::Pending(p) => {
                let (r, sock) = (r.clone(), sock.clone());
                tokio::spawn(async move {
                    let done = p.resolve(&r).await;
                    send(&sock, &done.bytes, peer).await;
                    done.sent(&r);
                });
            }
        }
    }
}

async fn send(sock: &UdpSocket, b: &[u8], peer: SocketAddr) {
    // try_send_to first: a socket buffer with room takes it without a trip
    // through the reactor.
    match sock.try_send_to(b, peer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            if let Err(e) = sock.send_to(b, peer).await {
                debug!("udp send to {peer}: {e}");
            }
        }
        Err(e) => debug!("udp send to {peer}: {e}"),
    }
}

pub(crate) async fn serve_tcp(listener: TcpListener, r: Arc<Resolver>) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!("tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let r = r.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(stream, peer, r).await {
                debug!("tcp client {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(stream: TcpStream, peer: SocketAddr, r: Arc<Resolver>) -> Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_PIPELINE);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            let mut framed = Vec::with_capacity(b.len() + 2);
            framed.extend_from_slice(&(b.len() as u16).to_be_bytes());
            framed.extend_from_slice(&b);
            if wr.write_all(&framed).await.is_err() {
                break;
            }
        }
    });
    let pipeline = Arc::new(Semaphore::new(TCP_PIPELINE));
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, rd.read_u16()).await {
            Ok(Ok(n)) => n as usize,
            _ => break, // idle, closed or reset
        };
        let mut buf = vec![0u8; len];
        if tokio::time::timeout(TCP_IDLE, rd.read_exact(&mut buf))
            .await
            .map_or(true, |x| x.is_err())
        {
            break;
        }
        let mut out = Vec::new();
        match r.handle(&buf, peer, Transport::Tcp, &mut out) {
            Handled::Answered => {
                let _ = tx.send(out).await;
            }
            Handled::Ignored => {}
            Handled::Pending(p) => {
                let slot = pipeline.clone().acquire_owned().await?;
                let (r, tx) = (r.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut done = p.resolve(&r).await;
                    let _ = tx.send(std::mem::take(&mut done.bytes)).await;
                    done.sent(&r);
                    drop(slot);
                });
            }
        }
    }
    drop(tx);
    // Let answers still in flight reach the client before closing.
    let _ = writer.await;
    Ok(())
}

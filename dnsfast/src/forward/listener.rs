//! Client-facing sockets, bytes only: every message goes to
//! `Resolver::handle`, and what it answers goes back. UDP: one
//! SO_REUSEPORT socket per worker, so the kernel spreads clients over
//! threads without a shared queue; answers that need no upstream are sent
//! from the receive loop, the rest from a task. TCP: length-prefixed
//! messages, pipelined, answered in any order, every resource a client can
//! hold bounded (`TcpSettings`): connections in all and per address,
//! queries per connection, bytes of answers waiting to be read, and time
//! for each message to arrive and each answer to be taken.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use log::debug;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    time::{timeout, Instant},
};

use super::resolver::{Handled, Resolver, Transport};
use crate::config::forward::TcpSettings;

/// The largest query taken over TCP: real ones are a few hundred bytes,
/// and the UDP side reads no more either. A larger length prefix closes
/// the connection before anything is allocated for it.
const TCP_QUERY_LIMIT: usize = 4096;

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

/// Receives until `stop` turns true (a drain): queries already taken are
/// answered by their tasks; what is still queued stays for whoever reads
/// the socket next (the agent it was handed to).
pub(crate) async fn serve_udp(
    sock: UdpSocket,
    r: Arc<Resolver>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(1500);
    loop {
        let got = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            got = sock.recv_from(&mut buf) => got,
        };
        let (n, peer) = match got {
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

/// What every TCP connection shares: the bounds and what they count.
struct Tcp {
    s: TcpSettings,
    /// Open connections per client address.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    open: Arc<Semaphore>,
    /// Bytes of answers waiting for their clients to read them.
    buffered: Arc<Semaphore>,
}

/// One open connection's place, given back when it closes.
struct Slot {
    tcp: Arc<Tcp>,
    ip: IpAddr,
    _open: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .tcp
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Tcp {
    /// A place for a new connection from `ip`, or `None` past either bound.
    fn slot(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let open = self.open.clone().try_acquire_owned().ok()?;
        let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.s.max_per_client {
            return None;
        }
        *n += 1;
        Some(Slot {
            tcp: self.clone(),
            ip,
            _open: open,
        })
    }
}

/// An answer on its way to the client: it holds its pipeline slot and its
/// bytes of the shared budget until it is written.
struct Queued {
    bytes: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    _room: OwnedSemaphorePermit,
}

/// Accepts connections for as long as the listener lives. Past
/// `tcp-max-connections` or `tcp-max-per-client` a new connection is
/// closed at once (its client moves on), never left in the backlog
/// holding everyone else's place.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    r: Arc<Resolver>,
    s: TcpSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let budget = s.buffer_bytes.min(Semaphore::MAX_PERMITS);
    let tcp = Arc::new(Tcp {
        open: Arc::new(Semaphore::new(s.max_connections)),
        buffered: Arc::new(Semaphore::new(budget)),
        per_client: Mutex::new(HashMap::new()),
        s,
    });
    let mut pause = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                pause = Duration::from_millis(10);
                x
            }
            Err(e) => {
                // Out of files, say: wait and try again, never give up.
                debug!("tcp accept: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(slot) = tcp.slot(peer.ip()) else {
            r.metrics.tcp_rejected.fetch_add(1, Ordering::Relaxed);
            // Reset rather than close: no TIME_WAIT, no lingering state.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            continue;
        };
        let (r, tcp) = (r.clone(), tcp.clone());
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(stream, peer, &r, &tcp).await {
                debug!("tcp client {peer}: {e}");
                r.metrics.tcp_dropped.fetch_add(1, Ordering::Relaxed);
            }
            drop(slot);
        });
    }
}

/// One connection: a reader that hands queries to the resolver and a
/// writer that sends the answers. The connection ends, and frees all it
/// held, when the client closes it, when it stays idle or dribbles a
/// message for `tcp-idle-ms`, or when it does not take an answer within
/// `tcp-write-timeout-ms`; the last two are errors (counted as dropped).
async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    r: &Arc<Resolver>,
    tcp: &Arc<Tcp>,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let s = &tcp.s;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Queued>(s.pipeline);
    let write_timeout = s.write_timeout;
    let mut writer = tokio::spawn(async move {
        while let Some(q) = rx.recv().await {
            let mut framed = Vec::with_capacity(q.bytes.len() + 2);
            framed.extend_from_slice(&(q.bytes.len() as u16).to_be_bytes());
            framed.extend_from_slice(&q.bytes);
            match timeout(write_timeout, wr.write_all(&framed)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(anyhow::anyhow!("writing: {e}")),
                Err(_) => anyhow::bail!("did not take an answer in {write_timeout:?}"),
            }
        }
        Ok(())
    });
    let pipeline = Arc::new(Semaphore::new(s.pipeline));
    let reading = async {
        loop {
            let Some(msg) = read_message(&mut rd, s.idle).await? else {
                return Ok::<_, anyhow::Error>(());
            };
            // A free pipeline slot, or the client waits (it is not read).
            let slot = pipeline.clone().acquire_owned().await?;
            let mut out = Vec::new();
            match r.handle(&msg, peer, Transport::Tcp, &mut out) {
                Handled::Answered => queue(tcp, &tx, out, slot).await?,
                Handled::Ignored => {}
                Handled::Pending(p) => {
                    let (r, tx, tcp) = (r.clone(), tx.clone(), tcp.clone());
                    tokio::spawn(async move {
                        let mut done = p.resolve(&r).await;
                        let bytes = std::mem::take(&mut done.bytes);
                        if queue(&tcp, &tx, bytes, slot).await.is_ok() {
                            done.sent(&r);
                        }
                    });
                }
            }
        }
    };
    tokio::select! {
        read = reading => {
            // The client is done asking (or broke a bound): what it was
            // owed still goes out, within the write timeout, then close.
            read?;
            drop(tx);
            let idle = s.idle;
            match timeout(idle, &mut writer).await {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => Err(anyhow::anyhow!("writer: {e}")),
                Err(_) => {
                    writer.abort();
                    anyhow::bail!("answers still owed after {idle:?}")
                }
            }
        }
        w = &mut writer => match w {
            Ok(w) => w,
            Err(e) => Err(anyhow::anyhow!("writer: {e}")),
        },
    }
}

/// One length-prefixed message, or `None` when the client closed between
/// messages. The whole message must arrive within `idle` of the wait's
/// start, so a client that sends a byte a second is cut off.
async fn read_message(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    idle: Duration,
) -> Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + idle;
    let mut len = [0u8; 2];
    match tokio::time::timeout_at(deadline, rd.read(&mut len[..1])).await {
        Err(_) => return Ok(None), // idle between messages: a normal close
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
    }
    let rest = async {
        rd.read_exact(&mut len[1..]).await?;
        let n = u16::from_be_bytes(len) as usize;
        if n > TCP_QUERY_LIMIT {
            anyhow::bail!("a {n}-byte query, past {TCP_QUERY_LIMIT}");
        }
        let mut buf = vec![0u8; n];
        rd.read_exact(&mut buf).await?;
        Ok(buf)
    };
    match tokio::time::timeout_at(deadline, rest).await {
        Ok(r) => r.map(Some),
        Err(_) => anyhow::bail!("a message took longer than {idle:?} to arrive"),
    }
}

/// Hands an answer to the writer once the shared answer budget has room
/// for it; a client whose answers cannot get room within the write
/// timeout loses its connection.
async fn queue(
    tcp: &Tcp,
    tx: &mpsc::Sender<Queued>,
    bytes: Vec<u8>,
    slot: OwnedSemaphorePermit,
) -> Result<()> {
    let need = (bytes.len() as u32).max(1);
    let room = timeout(
        tcp.s.write_timeout,
        tcp.buffered.clone().acquire_many_owned(need),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no room for answers in {:?}", tcp.s.write_timeout))??;
    tx.send(Queued {
        bytes,
        _slot: slot,
        _room: room,
    })
    .await
    .map_err(|_| anyhow::anyhow!("the connection is closed"))
}

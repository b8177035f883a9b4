//! The metrics endpoint: OpenMetrics `/metrics`, `/health` (the
//! forwarder answers a query to itself through its listeners) and `/ready`
//! (attached, pinned and serving), over HTTP/1.1 served by `hyper`: it
//! faces every pod on the node, so the request parsing, the limits and
//! the timeouts are a maintained server's. Bounded: `MAX_CONNECTIONS` at
//! once and `MAX_PER_CLIENT` per address (more are closed at accept), a
//! request head must arrive within
//! `HEAD_TIMEOUT` and fit `MAX_HEAD`, and a connection lives at most
//! `CONNECTION_LIFETIME`.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{CONNECTION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use super::{openmetrics, runtime::AcceptBackoff, state::Agent, stats};
use crate::forward::selfcheck;

/// Connections served at once; a scraper and a kubelet need two.
const MAX_CONNECTIONS: usize = 64;
/// Connections from one address: a pod that holds its share cannot keep
/// the kubelet's probe (another address) out.
const MAX_PER_CLIENT: usize = 8;
/// A request head must arrive in full within this long (a slow client is
/// cut off, not waited for).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// However busy, a connection is closed after this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// How long `/health` waits for each of the forwarder's answers to
/// itself, per transport: a liveness probe should allow 2 s per listen
/// address (deploy/'s allows 3 s for its one).
const HEALTH_WAIT: Duration = Duration::from_millis(800);

pub(crate) async fn serve(listener: TcpListener, agent: Arc<Agent>) -> Result<()> {
    let mut backoff = AcceptBackoff::new("the metrics endpoint");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Default::default();
    loop {
        let (stream, peer) = backoff.next(|| listener.accept()).await;
        // Past a bound the connection is closed at once: a flood of idle
        // connections costs the agent nothing, and the kubelet's probe
        // comes from an address of its own.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let ip = peer.ip();
        {
            let mut m = per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= MAX_PER_CLIENT {
                continue;
            }
            *n += 1;
        }
        let per_client = per_client.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, Infallible>(respond(req, agent).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(permit);
            let mut m = per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    r
}

async fn respond(req: Request<Incoming>, agent: Arc<Agent>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
        r.headers_mut()
            .insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let text =
                tokio::task::spawn_blocking(move || openmetrics::render(stats::stats(&agent)))
                    .await;
            match text {
                Ok(body) => reply(StatusCode::OK, openmetrics::CONTENT_TYPE, body),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
            }
        }
        "/health" => {
            // Alive means answering: the forwarder is asked through its
            // own listeners, so a wedged one fails and gets restarted.
            for addr in &agent.listeners {
                if let Err(e) = selfcheck::ask(*addr, HEALTH_WAIT).await {
                    let why = format!("the forwarder does not answer: {e:#}\n");
                    return reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, why);
                }
            }
            reply(StatusCode::OK, TEXT, "ok\n".into())
        }
        "/ready" => {
            // With `[kubernetes]`, ready once the API has been listed: an
            // agent that never got there answers, but passes the whole
            // cluster domain up.
            let listed = agent
                .cluster
                .as_ref()
                .is_none_or(|c| c.status.lock().is_ok_and(|s| s.ever_synced));
            if !agent.ready.load(std::sync::atomic::Ordering::Relaxed) {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
            } else if !listed {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "not ready: the Kubernetes API has not been listed yet\n".into(),
                )
            } else {
                reply(StatusCode::OK, TEXT, "ready\n".into())
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "routes: /metrics /health /ready\n".into(),
        ),
    }
}

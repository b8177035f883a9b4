//! The metrics endpoint: OpenMetrics `/metrics`, `/health` (the
//! forwarder answers a query to itself through its listeners) and `/ready` (attached, pinned and serving). A few GET
//! routes on a private port do not need an HTTP framework: this reads one
//! request head per connection, answers, and closes.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{openmetrics, runtime::AcceptBackoff, state::Agent, stats};
use crate::forward::selfcheck;

/// Longest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// How long `/health` waits for each of the forwarder's answers to
/// itself, per transport: a liveness probe should allow 2 s per listen
/// address (deploy/'s allows 3 s for its one).
const HEALTH_WAIT: Duration = Duration::from_millis(800);

pub(crate) async fn serve(listener: TcpListener, agent: Arc<Agent>) -> Result<()> {
    let mut backoff = AcceptBackoff::new("the metrics endpoint");
    loop {
        let (stream, _) = backoff.next(|| listener.accept()).await;
        let agent = agent.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, agent)).await;
        });
    }
}

async fn answer(mut s: TcpStream, agent: Arc<Agent>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else {
        route(path, agent).await
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out).await?;
    s.shutdown().await
}

async fn route(path: &str, agent: Arc<Agent>) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => {
            let text =
                tokio::task::spawn_blocking(move || openmetrics::render(stats::stats(&agent)))
                    .await;
            match text {
                Ok(body) => ("200 OK", openmetrics::CONTENT_TYPE, body),
                Err(e) => ("500 Internal Server Error", TEXT, format!("{e}\n")),
            }
        }
        "/health" => {
            // Alive means answering: the forwarder is asked through its
            // own listeners, so a wedged one fails and gets restarted.
            for addr in &agent.listeners {
                if let Err(e) = selfcheck::ask(*addr, HEALTH_WAIT).await {
                    let why = format!("the forwarder does not answer: {e:#}\n");
                    return ("503 Service Unavailable", TEXT, why);
                }
            }
            ("200 OK", TEXT, "ok\n".into())
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
                ("503 Service Unavailable", TEXT, "not ready\n".into())
            } else if !listed {
                (
                    "503 Service Unavailable",
                    TEXT,
                    "not ready: the Kubernetes API has not been listed yet\n".into(),
                )
            } else {
                ("200 OK", TEXT, "ready\n".into())
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            "routes: /metrics /health /ready\n".into(),
        ),
    }
}

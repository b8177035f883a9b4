//! The control socket's client side: the CLI, and a new agent taking a
//! running one's place, ask the agent of a pin directory over it (one
//! request line, one JSON line back; `agent::control` is the server).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::paths;

/// A connection to the agent of `pin_dir`; `None` when no agent listens
/// there (no socket, or a stale one of a killed agent).
pub(crate) fn connect(pin_dir: &Path) -> Result<Option<UnixStream>> {
    let path = paths::control_socket(pin_dir);
    match UnixStream::connect(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

/// Sends one request to the agent of `pin_dir`. `Ok(None)` when no agent
/// listens there (no socket, or a stale one of a killed agent).
pub(crate) fn ask(pin_dir: &Path, request: &str) -> Result<Option<Value>> {
    let Some(mut stream) = connect(pin_dir)? else {
        return Ok(None);
    };
    let path = paths::control_socket(pin_dir);
    // A reload of a large config or a 10k-pattern resync takes a while.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("reading the agent's answer on {}", path.display()))?;
    let v: Value = serde_json::from_str(&line)
        .with_context(|| format!("the agent's answer is not JSON: {line:?}"))?;
    if v["ok"] != json!(true) {
        bail!(
            "the agent refused '{request}': {}",
            v["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(Some(v))
}

/// [`ask`], with the answer read as a `T` (a typed snapshot).
pub(crate) fn ask_as<T: serde::de::DeserializeOwned>(
    pin_dir: &Path,
    request: &str,
) -> Result<Option<T>> {
    match ask(pin_dir, request)? {
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .with_context(|| format!("reading the agent's answer to '{request}'")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_agent_is_none_not_an_error() {
        let dir = Path::new("/sys/fs/bpf/dnsfast-no-such-agent-for-a-unit-test");
        assert!(ask(dir, "status").unwrap().is_none());
    }
}

//! The command line, one file per command group; `main.rs` holds only the
//! clap tree and the dispatch.
//!
//! - `load`: `dnsfast load` (the agent) and `serve`: `dnsfast serve` (the
//!   forwarder alone);
//! - `check`: `check-config`, `suggest`, `example-config`, `tld-list`;
//! - `patterns`: `block` and `allow`, on the pinned table;
//! - `ops`: `stats`, `status`, `watch`, `unload`, on the running agent;
//! - `cache`: `cache flush`, on the running agent's caches;
//! - `explain`: the loaded program's verdict on one name.
//!
//! The top of the crate: it may use every module below it.

pub mod cache;
pub mod check;
pub mod explain;
pub mod load;
pub mod ops;
pub mod patterns;
pub mod serve;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::paths::PIN_DIR;

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// Where `dnsfast load` pinned its maps (and names its control socket,
    /// /run/dnsfast/<DIR below /sys/fs/bpf, / as -->.sock).
    #[arg(long, value_name = "DIR", default_value = PIN_DIR, global = true)]
    pub(crate) pin_dir: PathBuf,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr through `tracing`: the crate's `log` macros too
/// (tracing-log), and the structured events (reloads, attach and detach,
/// upstream health, the Kubernetes watch, the query log) with their
/// fields, as text or JSON lines.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let base = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => base.try_init(),
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

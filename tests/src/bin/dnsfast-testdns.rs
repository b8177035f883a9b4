//! A test DNS server for the end-to-end labs; see `dnsfast_tests::upstream`.
//!
//! dnsfast-testdns --listen IP:PORT [--answer NAME=IPV4]… [--ttl S]
//!   [--delay-ms MS] [--drop SUFFIX]… [--tc SUFFIX]… [--tc-records N] [--tc-txt-bytes N]
//!   [--answer-suffix SUFFIX=IPV4]… [--spoof] [--log FILE]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use dnsfast_tests::upstream::Upstream;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// NAME=IPV4; names are absolute, lower case.
    #[arg(long = "answer")]
    answers: Vec<String>,
    #[arg(long, default_value_t = 60)]
    ttl: u32,
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long = "drop")]
    drops: Vec<String>,
    #[arg(long = "tc")]
    tcs: Vec<String>,
    /// A records in the TCP answer for `--tc` names.
    #[arg(long, default_value_t = 40)]
    tc_records: usize,
    /// TXT records of about N bytes in the TCP answer for `--tc` names.
    #[arg(long, default_value_t = 0)]
    tc_txt_bytes: usize,
    /// SUFFIX=IPV4: every name under SUFFIX gets IPV4.
    #[arg(long = "answer-suffix")]
    answer_suffixes: Vec<String>,
    #[arg(long)]
    spoof: bool,
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

fn fqdn(s: &str) -> String {
    let s = s.to_ascii_lowercase();
    if s.ends_with('.') {
        s
    } else {
        format!("{s}.")
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let answers = a
        .answers
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("--answer NAME=IPV4")?;
            Ok((
                fqdn(k),
                v.parse::<Ipv4Addr>().context("--answer NAME=IPV4")?,
            ))
        })
        .collect::<Result<_>>()?;
    let answer_suffixes = a
        .answer_suffixes
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("--answer-suffix SUFFIX=IPV4")?;
            Ok((
                fqdn(k),
                v.parse::<Ipv4Addr>()
                    .context("--answer-suffix SUFFIX=IPV4")?,
            ))
        })
        .collect::<Result<_>>()?;
    let log = match &a.log {
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))),
        None => None,
    };
    Upstream {
        delay: Duration::from_millis(a.delay_ms),
        answers,
        ttl: a.ttl,
        drop_suffixes: a.drops.iter().map(|s| fqdn(s)).collect(),
        tc_suffixes: a.tcs.iter().map(|s| fqdn(s)).collect(),
        tc_records: a.tc_records,
        tc_txt_bytes: a.tc_txt_bytes,
        answer_suffixes,
        spoof: a.spoof,
        log,
        ..Upstream::new(a.listen)
    }
    .serve()
}

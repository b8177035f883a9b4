//! `dnsfast cache flush [NAME | --zone ZONE]`: drops cached answers from the
//! running agent's forwarder and from the kernel's answer cache, so the
//! next query for them goes upstream.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::PinArgs;
use crate::agent::client;

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Drop cached answers: every one, one name's (all types), or a
    /// zone's (the zone and every name below it).
    ///
    /// Example: dnsfast cache flush --zone example.com
    Flush(FlushArgs),
}

#[derive(Args, Debug)]
pub struct FlushArgs {
    /// One name: its answers of every type.
    #[arg(value_name = "NAME", conflicts_with = "zone")]
    pub(crate) name: Option<String>,
    /// A zone: its own answers and every name's below it.
    #[arg(long, value_name = "ZONE")]
    pub(crate) zone: Option<String>,
}

pub fn run(cmd: CacheCmd, pins: &PinArgs) -> Result<()> {
    let CacheCmd::Flush(a) = cmd;
    let request = match (&a.name, &a.zone) {
        (Some(n), _) => format!("flush name {n}"),
        (None, Some(z)) => format!("flush zone {z}"),
        (None, None) => "flush all".to_string(),
    };
    match client::ask(&pins.pin_dir, &request)? {
        Some(v) => {
            println!("{}", v["summary"].as_str().unwrap_or("flushed"));
            Ok(())
        }
        None => bail!(
            "no agent runs for {} (nothing is cached without one)",
            pins.pin_dir.display()
        ),
    }
}

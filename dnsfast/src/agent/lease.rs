//! The agent's lease in the kernel (`dnsfast_common::MAP_LEASE`): renewed
//! every second for `LEASE` ahead. While it runs, the program answers
//! from the agent's fresh knowledge (cached answers, the Kubernetes API's
//! verdicts); when the agent is gone (a crash, an OOM kill, `--keep-
//! attached` between two agents) it runs out within `LEASE`, and those
//! queries go up instead of being answered from knowledge nobody keeps.
//! The patterns and search suffixes, a function of the config alone, keep
//! being answered.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use log::warn;

use super::state::{poisoned, Agent};
use crate::{dataplane::Dataplane, forward::kernel_cache::monotonic_ns};

/// How far ahead each renewal reaches.
pub(crate) const LEASE: Duration = Duration::from_secs(3);
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Takes the lease: the first one, before anything is attached.
pub(crate) fn take(dp: &mut Dataplane) -> Result<()> {
    dp.renew_lease(monotonic_ns() + LEASE.as_nanos() as u64)
}

/// Renews it until the agent ends.
pub(crate) async fn renew(agent: Arc<Agent>) -> Result<()> {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = agent.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<()> {
            take(&mut *a.dp.lock().map_err(poisoned)?)
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("renewing the kernel lease: {e:#}"),
            Err(e) => warn!("renewing the kernel lease: {e}"),
        }
    }
}

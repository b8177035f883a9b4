//! The running agent's shared state ([`Agent`]): the loaded program and
//! its maps, the interfaces, the config in force, the forwarder; and the
//! changes made to it live (interface sync, pattern resync, reload). The
//! control socket, the config watch, the link watch and the stats all work
//! on it.

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::SystemTime,
};

use anyhow::{anyhow, bail, Context, Result};
use dnsfast_common::pattern::Pattern;
use log::{info, warn};

use super::{
    events::Events,
    ifaces::{self, Ifaces},
};
use crate::{
    config::{self, Config, ForwardFlags, KubeFlags},
    dataplane::{self, pins, Dataplane},
    forward::{
        resolver::{self, Flush, Resolver},
        Proto,
    },
    rules,
};

/// What the config is rebuilt from at a reload: the file and the flags.
pub(crate) struct Inputs {
    pub(crate) config: Option<PathBuf>,
    pub(crate) addresses: Vec<String>,
    pub(crate) forward: ForwardFlags,
    pub(crate) kube: KubeFlags,
}

/// The config in force, and how reloads went.
pub(crate) struct Applied {
    pub(crate) cfg: Config,
    /// The file's bytes when it was applied, to tell a real change from
    /// a touch.
    pub(crate) file: Option<Vec<u8>>,
    pub(crate) reloads: u64,
    pub(crate) refused: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) last_reload: Option<SystemTime>,
}

pub(crate) struct Agent {
    pub(crate) pid: u32,
    pub(crate) started: SystemTime,
    pub(crate) pin_dir: PathBuf,
    pub(crate) keep_attached: bool,
    pub(crate) inputs: Inputs,
    /// Lock order: `dp`, then `ifaces`, then `applied`.
    pub(crate) dp: Mutex<Dataplane>,
    pub(crate) ifaces: Mutex<Ifaces>,
    pub(crate) applied: Mutex<Applied>,
    pub(crate) forwarder: Option<Arc<Resolver>>,
    pub(crate) listeners: Vec<SocketAddr>,
    pub(crate) program_id: u32,
    /// Query events for `dnsfast watch` (none if the ring is unavailable).
    pub(crate) events: Option<Events>,
    /// The Kubernetes API watch (`[kubernetes]`).
    pub(crate) cluster: Option<Arc<super::cluster::ClusterWatch>>,
    /// Attached, pinned and serving.
    pub(crate) ready: AtomicBool,
    /// `dnsfast unload` asked: detach even with `--keep-attached`.
    pub(crate) unloading: AtomicBool,
    /// Duplicates of the listening sockets (forwarder, metrics), for a
    /// new agent that takes over (`handover`).
    pub(crate) sockets: Vec<(SocketAddr, Proto, OwnedFd)>,
    /// A new agent is taking over: interface changes are left to it.
    pub(crate) handing_over: AtomicBool,
    /// A new agent took over: this one serves nothing and removes nothing.
    pub(crate) handed_over: AtomicBool,
    pub(crate) stop: tokio::sync::Notify,
}

pub(crate) fn poisoned<T>(_: T) -> anyhow::Error {
    anyhow!("an agent lock is poisoned (a thread panicked)")
}

impl Agent {
    /// Duplicates of the sockets to hand over.
    pub(crate) fn handover_sockets(&self) -> Vec<(SocketAddr, Proto, OwnedFd)> {
        self.sockets
            .iter()
            .filter_map(|(a, p, fd)| Some((*a, *p, fd.try_clone().ok()?)))
            .collect()
    }

    /// Attaches to new matching interfaces, forgets vanished ones.
    pub(crate) fn sync_ifaces(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.handing_over.load(SeqCst) || self.handed_over.load(SeqCst) {
            return Ok(());
        }
        let mut dp = self.dp.lock().map_err(poisoned)?;
        let mut ifs = self.ifaces.lock().map_err(poisoned)?;
        ifaces::sync(&mut dp, &mut ifs)
    }

    pub(crate) fn detach_iface(&self, name: &str) -> Result<()> {
        let mut dp = self.dp.lock().map_err(poisoned)?;
        let mut ifs = self.ifaces.lock().map_err(poisoned)?;
        ifaces::detach(&mut dp, &mut ifs, name)
    }

    /// After `dnsfast block|allow` changed the kernel pattern table: the
    /// forwarder takes the same table. Returns the number of rules.
    pub(crate) fn resync_rules(&self) -> Result<usize> {
        let mut dp = self.dp.lock().map_err(poisoned)?;
        // Read while no CLI writes: a scan racing a cuckoo move could miss
        // the moved entry.
        let rules = {
            let _tables = pins::lock_dir(&self.pin_dir)?;
            dp.rules()?
        };
        drop(dp);
        // The Kubernetes API's entries have their own map in the forwarder.
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| c.installed())
            .unwrap_or_default();
        let rules: rules::RuleSet = rules
            .into_iter()
            .filter(|(k, r)| cluster.get(k) != Some(r))
            .collect();
        if let Some(r) = &self.forwarder {
            r.set_rules(&rules);
        }
        info!("pattern table changed from the CLI: {} rules", rules.len());
        Ok(rules.len())
    }

    /// Rebuilds the config from the file and flags and applies the
    /// difference. A config that does not validate changes nothing, and the
    /// old one keeps serving.
    pub(crate) fn reload(&self, why: &str) -> Result<String> {
        let t = std::time::Instant::now();
        let result = self
            .try_reload()
            .map(|s| format!("{s}; applied in {} ms", t.elapsed().as_millis()));
        let mut a = self.applied.lock().map_err(poisoned)?;
        a.last_reload = Some(SystemTime::now());
        match &result {
            Ok(summary) => {
                a.reloads += 1;
                a.last_error = None;
                tracing::info!(event = "reload", why = %why, "config reloaded ({why}): {summary}");
            }
            Err(e) => {
                let error = format!("{e:#}");
                a.refused += 1;
                tracing::warn!(
                    event = "reload_refused",
                    why = %why,
                    error = %error,
                    "config reload ({why}) refused, the previous config keeps serving: {error}"
                );
                a.last_error = Some(error);
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String> {
        let i = &self.inputs;
        let file = match &i.config {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
            None => None,
        };
        let cfg = config::build(i.config.as_deref(), &i.addresses, &i.forward, &i.kube)?;
        // What is in force now: the baseline for the notes, the capacity
        // check and the way back.
        let old_cfg = self.applied.lock().map_err(poisoned)?.cfg.clone();
        let notes: Vec<&str> = [
            (
                cfg.forward.listen != old_cfg.forward.listen,
                "forward.listen changes take a restart",
            ),
            (
                cfg.forward.cache.size != old_cfg.forward.cache.size,
                "cache.size changes take a restart",
            ),
            (
                cfg.forward.cache.max_bytes != old_cfg.forward.cache.max_bytes,
                "cache.max-bytes changes take a restart",
            ),
            (
                cfg.forward.max_inflight != old_cfg.forward.max_inflight,
                "forward.max-inflight changes take a restart",
            ),
            (
                cfg.forward.tcp != old_cfg.forward.tcp,
                "forward.tcp-* changes take a restart",
            ),
            (
                cfg.xdp.max_patterns != old_cfg.xdp.max_patterns,
                "xdp.max-patterns changes take a restart",
            ),
        ]
        .into_iter()
        .filter_map(|(changed, note)| changed.then_some(note))
        .collect();
        let rules = rules::rules_of(&cfg.patterns);
        let tlds = dataplane::tlds_of(&cfg);
        // Everything that can fail without touching anything comes first.
        let next = match &self.forwarder {
            Some(_) => Some(resolver::live(&cfg.forward, &rules, cfg.derived.as_ref())?),
            None => None,
        };
        let mut dp = self.dp.lock().map_err(poisoned)?;
        // The table holds the Kubernetes API's entries too (the config's
        // win at equal keys); read under the dataplane lock, which the
        // watch holds while it writes.
        let mut table_rules = self
            .cluster
            .as_ref()
            .map(|c| c.installed())
            .unwrap_or_default();
        table_rules.extend(rules.iter().map(|(k, r)| (k.clone(), *r)));
        let rules = table_rules;
        // `dnsfast block|allow` writes the pinned table too: one at a time.
        let _tables = pins::lock_dir(&self.pin_dir)?;
        let old_rules = dp.rules()?;
        let capacity = old_cfg.xdp.max_patterns as usize;
        // The table holds both configs' entries for a moment (namespace
        // suffixes folded).
        let (new_table, _) = rules::fold_namespaces(&rules);
        let (old_table, _) = rules::fold_namespaces(&old_rules);
        let union = old_table.len()
            + new_table
                .keys()
                .filter(|k| !old_table.contains_key(*k))
                .count();
        if union > capacity {
            bail!(
                "the old and new pattern tables hold {union} patterns together, more than the \
                 loaded map's {capacity}: add-then-delete could not keep the old ones in place. \
                 Raise xdp.max-patterns and restart"
            );
        }
        let d = match dp
            .reconcile(&rules, &tlds)
            .and_then(|d| dataplane::apply_xdp(&mut dp, &cfg).map(|_| d))
        {
            Ok(d) => d,
            Err(e) => {
                // Put back what was there, so nothing is half-applied.
                // (The old rules, not the old config's: they hold the
                // run-time changes made since.)
                if let Err(e2) = dp
                    .reconcile(&old_rules, &dataplane::tlds_of(&old_cfg))
                    .and_then(|_| dataplane::apply_xdp(&mut dp, &old_cfg))
                {
                    warn!("restoring the previous maps failed too: {e2:#}");
                }
                return Err(e);
            }
        };
        drop(dp);
        let dropped = match (&self.forwarder, next) {
            (Some(r), Some(n)) => Some(r.reload(n)),
            _ => None,
        };
        let mut a = self.applied.lock().map_err(poisoned)?;
        a.cfg = cfg;
        a.file = file;
        let mut s = d.to_string();
        if let Some(dropped) = dropped {
            s.push_str(&format!("; {dropped}"));
        }
        for n in notes {
            s.push_str("; note: ");
            s.push_str(n);
        }
        Ok(s)
    }

    /// `dnsfast cache flush`: `all`, `name NAME` or `zone ZONE`.
    pub(crate) fn flush_cache(&self, arg: &str) -> Result<String> {
        let Some(r) = &self.forwarder else {
            bail!("this agent runs no forwarder, so it caches nothing");
        };
        let (what, name) = arg.split_once(' ').unwrap_or((arg, ""));
        let key = |text: &str| -> Result<Vec<u8>> {
            let p = Pattern::parse(text).map_err(|e| anyhow!("'{text}': {e}"))?;
            let (data, len) = p.key();
            Ok(data[..len].to_vec())
        };
        let scope = match what {
            "all" => Flush::All,
            "name" => Flush::Name(key(name)?),
            "zone" if name.trim() == "." => Flush::All,
            "zone" => Flush::Zone(key(name)?),
            other => bail!("flush what? '{other}' (all, name NAME, zone ZONE)"),
        };
        let dropped = r.flush(&scope);
        info!("cache flush ({arg}): {dropped}");
        Ok(dropped.to_string())
    }

    /// `dnsfast unload`: detach everything, remove the pins, exit.
    pub(crate) fn request_stop(&self) {
        self.unloading
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop.notify_one();
    }
}

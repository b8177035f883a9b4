//! The cluster's names from the Kubernetes API: Namespaces and Services
//! (their metadata only) listed, then watched, and turned into the exact
//! cluster-domain entries of `rules::cluster_rules`, which go to the kernel
//! table and the forwarder as they change.
//!
//! Nothing is installed before both lists are complete: until then, and
//! whenever the watch has been broken for longer than
//! `kubernetes.stale-after`, every name under the cluster domain passes to
//! the forwarder (no NXDOMAIN the agent cannot prove). A broken watch is
//! then restarted from a fresh list, and the entries come back once it is
//! complete. Nothing here ever waits on the packet path: the kernel reads
//! its table, the forwarder its map, whatever this task is doing.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use dnsfast_common::pattern::{rule_entry, Action, Pattern};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::{
    core::PartialObjectMeta,
    runtime::{
        watcher::{self, watcher, Event},
        WatchStreamExt,
    },
    Api, Client, ResourceExt,
};
use log::{info, warn};

use super::{
    cluster::ClusterWatch,
    state::{poisoned, Agent},
};
use crate::{
    config::kubernetes::KubernetesSettings,
    dataplane::pins,
    rules::{self, ClusterNames},
};

/// The API client: the kubeconfig given, or the pod's service account.
pub(crate) async fn client(s: &KubernetesSettings) -> Result<Client> {
    let config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("the kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| {
            anyhow!(
                "[kubernetes] without a kubeconfig needs a pod's service account ({e}); \
                 give --kubeconfig FILE outside a cluster"
            )
        })?,
    };
    Client::try_from(config).context("making the Kubernetes API client")
}

/// One line at start when the API does not answer, and what that means.
pub(crate) async fn probe(client: &Client, w: &ClusterWatch) {
    let r = tokio::time::timeout(Duration::from_secs(3), client.apiserver_version()).await;
    let err = match r {
        Ok(Ok(v)) => {
            info!(
                "kubernetes API {}.{} reached; listing Namespaces and Services",
                v.major, v.minor
            );
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer in 3 s".to_string(),
    };
    warn!(
        "kubernetes API not reachable ({err}): until Namespaces and Services have been listed, \
         every name under {} passes to the forwarder (no NXDOMAIN from the kernel there)",
        w.cluster_domain
    );
}

enum Ended {
    Stale,
    Degraded,
}

enum Ev {
    Ns(watcher::Result<Event<PartialObjectMeta<Namespace>>>),
    Svc(watcher::Result<Event<PartialObjectMeta<Service>>>),
}

/// Lists and watches until the agent ends; never returns an error (a
/// broken API is a state, not the end of the agent).
pub(crate) async fn run(agent: Arc<Agent>, w: Arc<ClusterWatch>, client: Client) -> Result<()> {
    probe(&client, &w).await;
    loop {
        // Stale or degraded: the entries are withdrawn; a fresh list
        // brings them back (after a pause if they did not fit).
        let pause = match watch_once(&agent, &w, &client).await {
            Ended::Stale => 1,
            Ended::Degraded => 30,
        };
        tokio::time::sleep(Duration::from_secs(pause)).await;
    }
}

/// One pair of watchers, from their first list until they have been
/// broken for longer than the limit.
async fn watch_once(agent: &Agent, w: &ClusterWatch, client: &Client) -> Ended {
    let cfg = watcher::Config::default();
    // Metadata only: a name is all a verdict needs.
    let ns = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        cfg.clone(),
    )
    .default_backoff()
    .map(Ev::Ns)
    .boxed();
    let svc = watcher(Api::<PartialObjectMeta<Service>>::all(client.clone()), cfg)
        .default_backoff()
        .map(Ev::Svc)
        .boxed();
    let mut events = futures::stream::select(ns, svc);
    // What the API says now, and the lists being read.
    let mut names = ClusterNames::default();
    // A list being read, per kind (its `Init` to its `InitDone`).
    let mut ns_list: Option<BTreeSet<String>> = None;
    let mut svc_list: Option<BTreeSet<(String, String)>> = None;
    let (mut ns_listed, mut svc_listed) = (false, false);
    let mut broken: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = tick.tick() => {
                if broken.is_some_and(|t| t.elapsed() >= w.settings.stale_after) {
                    withdraw(agent, w, "the watch has been broken for longer than kubernetes.stale-after");
                    return Ended::Stale;
                }
                continue;
            }
        };
        let Some(ev) = ev else { return Ended::Stale };
        // What changes: Some(full) after a list completes, or one entry.
        let mut relisted = false;
        let mut change: Option<(bool, String, Action)> = None; // (add?, name, action)
        let failed = match ev {
            Ev::Ns(Err(e)) | Ev::Svc(Err(e)) => Some(e.to_string()),
            Ev::Ns(Ok(e)) => {
                match e {
                    Event::Init => ns_list = Some(BTreeSet::new()),
                    Event::InitApply(o) => {
                        if let Some(l) = ns_list.as_mut() {
                            l.insert(o.name_any());
                        }
                    }
                    Event::InitDone => {
                        names.namespaces = ns_list.take().unwrap_or_default();
                        ns_listed = true;
                        relisted = true;
                    }
                    Event::Apply(o) => {
                        let n = o.name_any();
                        if names.namespaces.insert(n.clone()) {
                            let (name, a) = rules::namespace_entry(&w.cluster_domain, &n);
                            change = Some((true, name, a));
                        }
                    }
                    Event::Delete(o) => {
                        let n = o.name_any();
                        if names.namespaces.remove(&n) {
                            let (name, a) = rules::namespace_entry(&w.cluster_domain, &n);
                            change = Some((false, name, a));
                        }
                    }
                }
                None
            }
            Ev::Svc(Ok(e)) => {
                let key = |o: &PartialObjectMeta<Service>| {
                    (o.namespace().unwrap_or_default(), o.name_any())
                };
                match e {
                    Event::Init => svc_list = Some(BTreeSet::new()),
                    Event::InitApply(o) => {
                        if let Some(l) = svc_list.as_mut() {
                            l.insert(key(&o));
                        }
                    }
                    Event::InitDone => {
                        names.services = svc_list.take().unwrap_or_default();
                        svc_listed = true;
                        relisted = true;
                    }
                    Event::Apply(o) => {
                        let (ns, s) = key(&o);
                        if names.services.insert((ns.clone(), s.clone())) {
                            let (name, a) = rules::service_entry(&w.cluster_domain, &ns, &s);
                            change = Some((true, name, a));
                        }
                    }
                    Event::Delete(o) => {
                        let (ns, s) = key(&o);
                        if names.services.remove(&(ns.clone(), s.clone())) {
                            let (name, a) = rules::service_entry(&w.cluster_domain, &ns, &s);
                            change = Some((false, name, a));
                        }
                    }
                }
                None
            }
        };
        {
            let mut st = w.status.lock().unwrap_or_else(|e| e.into_inner());
            match &failed {
                Some(e) => {
                    st.errors += 1;
                    st.last_error = Some(e.clone());
                    if broken.is_none() {
                        tracing::warn!(
                            event = "kube_watch_broken",
                            error = %e,
                            "kubernetes watch broken ({e}); retrying. Names under {} keep their \
                             verdicts for up to {:?}, then all pass until a fresh list",
                            w.cluster_domain, w.settings.stale_after
                        );
                        broken = Some(Instant::now());
                        st.broken_since = Some(SystemTime::now());
                    }
                }
                None => {
                    if broken.take().is_some() {
                        tracing::info!(event = "kube_watch_resumed", "kubernetes watch resumed");
                    }
                    st.broken_since = None;
                    st.events += 1;
                    st.last_event = Some(SystemTime::now());
                }
            }
            st.namespaces = names.namespaces.len();
            st.services = names.services.len();
        }
        if !(ns_listed && svc_listed) {
            continue;
        }
        let ok = if relisted || !w.status.lock().map(|s| s.synced).unwrap_or(false) {
            install(agent, w, &names)
        } else if let Some((add, name, action)) = change {
            apply_one(agent, w, add, &name, action)
        } else {
            true
        };
        if !ok {
            return Ended::Degraded;
        }
    }
}

/// Makes the installed entries those of `names`: additions (most specific
/// first) before removals (broadest first).
fn install(agent: &Agent, w: &ClusterWatch, names: &ClusterNames) -> bool {
    let (want, bad) = rules::cluster_rules(&w.cluster_domain, names, &w.settings.stub_zones);
    if !bad.is_empty() {
        warn!("names the API gave that are not DNS names (their namespaces pass): {bad:?}");
    }
    let have = w.installed();
    let add: Vec<(Vec<u8>, dnsfast_common::Rule)> = want
        .iter()
        .filter(|(k, r)| have.get(*k) != Some(r))
        .map(|(k, r)| (k.clone(), *r))
        .collect();
    let remove: Vec<Vec<u8>> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    let t = Instant::now();
    match write(agent, w, &add, &remove) {
        Ok(()) => {
            let mut st = w.status.lock().unwrap_or_else(|e| e.into_inner());
            if !st.synced {
                tracing::info!(
                    event = "kube_synced",
                    namespaces = names.namespaces.len(),
                    services = names.services.len(),
                    "kubernetes: {} namespaces, {} services listed; the cluster domain {} is \
                     exact now ({} entries, +{} -{} in {} ms)",
                    names.namespaces.len(),
                    names.services.len(),
                    w.cluster_domain,
                    want.len(),
                    add.len(),
                    remove.len(),
                    t.elapsed().as_millis()
                );
            }
            st.synced = true;
            st.ever_synced = true;
            st.degraded = None;
            st.entries = want.len();
            true
        }
        Err(e) => {
            degrade(agent, w, &format!("{e:#}"));
            false
        }
    }
}

/// One Namespace or Service came or went.
fn apply_one(agent: &Agent, w: &ClusterWatch, add: bool, name: &str, action: Action) -> bool {
    let Ok(p) = Pattern::parse(name) else {
        // Its namespace's entry would answer it NXDOMAIN: start over from
        // a list, where such a namespace passes whole.
        warn!("kubernetes: '{name}' is not a DNS name");
        return !add;
    };
    let (k, r) = rule_entry(&p, action);
    let r = if add {
        write(agent, w, &[(k, r)], &[])
    } else {
        write(agent, w, &[], &[k])
    };
    match r {
        Ok(()) => {
            let mut st = w.status.lock().unwrap_or_else(|e| e.into_inner());
            st.entries = w.installed.lock().map(|i| i.len()).unwrap_or(0);
            true
        }
        Err(e) => {
            degrade(agent, w, &format!("{e:#}"));
            false
        }
    }
}

/// Writes cluster entries to the kernel table and the forwarder, and
/// records them as installed. A key the config also has is left to the
/// config: hand-written patterns win, as in a reload.
fn write(
    agent: &Agent,
    w: &ClusterWatch,
    add: &[(Vec<u8>, dnsfast_common::Rule)],
    remove: &[Vec<u8>],
) -> Result<()> {
    // Only the keys written are looked up: a big hand-written list costs
    // nothing per event.
    let (kernel_add, kernel_remove) = {
        let a = agent.applied.lock().map_err(poisoned)?;
        let configured = |k: &[u8]| {
            a.cfg
                .patterns
                .action_of(&dnsfast_common::pattern::key_name(k))
                .is_some()
        };
        let add: Vec<(Vec<u8>, dnsfast_common::Rule)> = add
            .iter()
            .filter(|(k, _)| !configured(k))
            .cloned()
            .collect();
        let remove: Vec<Vec<u8>> = remove.iter().filter(|k| !configured(k)).cloned().collect();
        (add, remove)
    };
    // The dataplane lock is held across the record and the write, so a
    // reload (which takes it too) sees them agree. Adds are recorded
    // before they are written: one that fails halfway is still taken
    // away by a withdrawal.
    let mut dp = agent.dp.lock().map_err(poisoned)?;
    let mut inst = w.installed.lock().map_err(poisoned)?;
    for (k, r) in add {
        inst.insert(k.clone(), *r);
    }
    {
        let _tables = pins::lock_dir(&agent.pin_dir)?;
        dp.write_rules(&kernel_add, &kernel_remove)?;
    }
    if let Some(r) = &agent.forwarder {
        let fwd_add: Vec<(Vec<u8>, Action)> = add
            .iter()
            .filter_map(|(k, rule)| Action::from_code(rule.action).map(|a| (k.clone(), a)))
            .collect();
        r.update_cluster(&fwd_add, remove);
    }
    for k in remove {
        inst.remove(k);
    }
    Ok(())
}

/// Takes every cluster entry away: names under the cluster domain pass.
pub(crate) fn withdraw(agent: &Agent, w: &ClusterWatch, why: &str) {
    let have: Vec<Vec<u8>> = w.installed().into_keys().collect();
    if !have.is_empty() {
        tracing::warn!(
            event = "kube_withdrawn",
            why = %why,
            "kubernetes: {why}; the cluster domain's kernel verdicts are withdrawn, every name \
             under {} passes to the forwarder until the API has been listed again",
            w.cluster_domain
        );
    }
    if let Err(e) = write(agent, w, &[], &have) {
        warn!("kubernetes: withdrawing the cluster entries: {e:#}");
    }
    let mut st = w.status.lock().unwrap_or_else(|e| e.into_inner());
    st.synced = false;
    st.entries = 0;
}

/// An entry could not be written (a full table): rather than leave names
/// that exist answered NXDOMAIN, every cluster entry goes, so the whole
/// cluster domain passes, until the next complete list fits.
fn degrade(agent: &Agent, w: &ClusterWatch, err: &str) {
    warn!("kubernetes: {err}");
    withdraw(agent, w, "an entry could not be written");
    let mut st = w.status.lock().unwrap_or_else(|e| e.into_inner());
    st.degraded = Some(err.to_string());
}

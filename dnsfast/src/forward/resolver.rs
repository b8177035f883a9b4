//! What happens to one query, whatever transport brought it: every
//! listener hands its bytes to [`Resolver::handle`]. Blocked → NXDOMAIN;
//! cached → served; else routed to its zone's upstreams, with failover,
//! and cached ([`Pending::resolve`], on a task of the listener's).

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use arc_swap::ArcSwap;
use dnsfast_common::{
    pattern::Action,
    suffix::{decide_in, SuffixMap},
};
use hickory_proto::op::ResponseCode;
use log::info;
use tokio::sync::OwnedSemaphorePermit;

use anyhow::Result;
use log::warn;

use super::{
    admission::{Admission, Full, Ticket, WaitPlace},
    cache::{Cache, CacheKey, CacheKeyRef},
    kernel_cache::KernelCache,
    metrics::{rcode_name, Metrics},
    router::Router,
    selfcheck,
    wire::{parse_query, Answer, Cacheability, ClientQuery, Incoming},
};
use crate::{
    config::{
        auto::Derived,
        forward::{CacheSettings, ForwardSettings},
    },
    rules::{suffix_map, RuleSet},
};

/// Largest answer over TCP (its two-byte length prefix).
const TCP_ANSWER_LIMIT: usize = 65_535;

/// Where an answer came from, for the query log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Blocked,
    Cache,
    Upstream,
    /// Made here: SERVFAIL, REFUSED.
    Local,
}

/// An answer and how it was reached.
pub(crate) struct Outcome {
    pub(crate) answer: Arc<Answer>,
    /// Seconds to take off the TTLs (cache age).
    pub(crate) age: u32,
    pub(crate) source: Source,
    pub(crate) zone: Option<String>,
    pub(crate) upstream: Option<SocketAddr>,
}

/// What a reload replaces, swapped whole: a query keeps the version it
/// started with to the end, so a reload never drops one in flight.
pub(crate) struct Live {
    pub(crate) router: Arc<Router>,
    pub(crate) patterns: Arc<SuffixMap<Action>>,
    /// Labels that make a name before a search suffix look fully qualified.
    pub(crate) tlds: Arc<HashSet<Vec<u8>>>,
    pub(crate) cache_settings: CacheSettings,
    pub(crate) log_queries: bool,
    /// The largest answer over UDP (`forward.max-udp-size`).
    pub(crate) max_udp: usize,
    pub(crate) max_inflight_per_client: usize,
}

pub(crate) struct Resolver {
    pub(crate) live: ArcSwap<Live>,
    pub(crate) cache: Cache,
    pub(crate) admission: Arc<Admission>,
    /// Places for queries waiting for an upstream slot (`max-inflight` of
    /// them): past it a query is REFUSED at once.
    pub(crate) waiting: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: Metrics,
    /// The XDP program's answer cache, when `load` runs one.
    pub(crate) kernel_cache: std::sync::OnceLock<KernelCache>,
    /// The cluster domain's entries from the Kubernetes API, changed one
    /// at a time as its watch reports (a reload swaps `live` instead).
    pub(crate) cluster: std::sync::RwLock<SuffixMap<Action>>,
    /// Bumped by every reload and flush: an answer fetched before one is
    /// served but not cached, so the drop cannot be undone by a query
    /// that was in flight across it.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Who asked and how: where the answer goes, how large it may be, and
/// when the query arrived (only kept for the query log).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) transport: Transport,
    /// Bytes the answer may take before it goes out truncated.
    pub(crate) limit: usize,
    /// When the query arrived; `Some` only with `--log-queries` on.
    pub(crate) start: Option<Instant>,
}

/// What [`Resolver::handle`] made of one message.
pub(crate) enum Handled {
    /// The answer is in the caller's buffer: send it.
    Answered,
    /// Not a query (too short, or a response): send nothing, so two
    /// resolvers can never bounce answers at each other.
    Ignored,
    /// It needs an upstream: run [`Pending::resolve`] on a task.
    Pending(Pending),
}

/// A query to go upstream: admitted (it holds its slots until answered),
/// or waiting a moment for a slot (a burst, such as the backlog an agent
/// finds queued on its sockets when it starts).
pub(crate) struct Pending {
    q: Box<ClientQuery>,
    client: Client,
    ticket: Admit,
}

enum Admit {
    Now(Ticket),
    /// Holds one of the bounded places in the wait (all clients', and
    /// its client's).
    Wait(OwnedSemaphorePermit, WaitPlace),
}

/// How long a query past its client's share, or past `max-inflight`,
/// waits for a slot before it is REFUSED: long enough for a burst to
/// drain at upstream speed, short next to a stub's timeout.
const ADMIT_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// An upstream answer rendered for its client; once it is sent,
/// [`Resolved::sent`] hands it to the kernel's answer cache.
pub(crate) struct Resolved {
    pub(crate) bytes: Vec<u8>,
    q: Box<ClientQuery>,
    o: Outcome,
    epoch: u64,
}

impl Pending {
    pub(crate) async fn resolve(self, r: &Resolver) -> Resolved {
        let epoch = r.epoch.load(Ordering::Acquire);
        let ticket = match self.ticket {
            Admit::Now(t) => Some(t),
            Admit::Wait(place, mine) => {
                let t = r.admit_within(self.client.addr, ADMIT_WAIT).await;
                drop((place, mine));
                t
            }
        };
        let o = match &ticket {
            Some(_) => r.forward(&self.q, epoch).await,
            None => r.overloaded(&self.q),
        };
        drop(ticket);
        let bytes = r.answer_bytes(&self.q, &o, &self.client);
        Resolved {
            bytes,
            q: self.q,
            o,
            epoch,
        }
    }
}

impl Resolved {
    /// After the client has its answer: the kernel cache gets it too (a
    /// map update, a system call, so it waits until then).
    pub(crate) fn sent(self, r: &Resolver) {
        if r.epoch.load(Ordering::Acquire) == self.epoch {
            r.share_with_kernel(&self.q, &self.o);
        }
    }
}

/// Routes, patterns and the settings a reload may change, resolved from
/// `s`. Fails (and changes nothing) on a zone that does not resolve.
pub(crate) fn live(
    s: &ForwardSettings,
    rules: &RuleSet,
    derived: Option<&Derived>,
) -> Result<Live> {
    let zones = s.resolved_zones()?;
    if !zones.iter().any(|z| z.name == ".") {
        warn!("no default upstreams (no-resolv, and no --server=IP or zone \".\"): names outside the zones get REFUSED");
    }
    let router = Router::new(&zones);
    for z in &router.zones {
        let ups: Vec<String> = z.upstreams.iter().map(|u| u.addr.to_string()).collect();
        info!("zone {} -> [{}] ({:?})", z.name, ups.join(", "), z.policy);
    }
    Ok(Live {
        router: Arc::new(router),
        patterns: Arc::new(suffix_map(rules)),
        tlds: Arc::new(
            derived
                .map(|d| d.tlds.iter().map(|t| t.as_bytes().to_vec()).collect())
                .unwrap_or_default(),
        ),
        cache_settings: s.cache.clone(),
        log_queries: s.log_queries,
        max_udp: s.max_udp_size,
        max_inflight_per_client: s.max_inflight_per_client,
    })
}

/// What a cache flush covers.
pub(crate) enum Flush {
    All,
    /// One name (its key), every type.
    Name(Vec<u8>),
    /// A zone (its key) and every name below it.
    Zone(Vec<u8>),
}

/// What a reload or a flush took out of the caches.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) cache: usize,
    pub(crate) kernel: usize,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cached answers dropped ({} in the kernel's cache)",
            self.cache, self.kernel
        )
    }
}

/// Whether an answer cached under `old` may no longer be served under
/// `new`: its name now routes to other upstreams, its lifetime is past
/// the new `max-ttl`, or it is negative and `neg-cache` went off.
fn stale_after(old: &Live, new: &Live, key: &[u8], lifetime: u32, negative: bool) -> bool {
    let c = &new.cache_settings;
    if lifetime > c.max_ttl || (negative && !c.neg_cache) {
        return true;
    }
    let upstreams = |l: &Live| {
        l.router
            .route(key)
            .map(|z| z.upstreams.iter().map(|u| u.addr).collect::<Vec<_>>())
    };
    upstreams(old) != upstreams(new)
}

impl Resolver {
    /// One message from a client, over either transport: parsed, counted,
    /// answered here when it can be (into `out`), or admitted to go
    /// upstream. Past `max-inflight` it is answered REFUSED at once.
    pub(crate) fn handle(
        &self,
        msg: &[u8],
        addr: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Handled {
        // One load of the live settings serves the whole local answer.
        let live = self.live.load();
        let start = live.log_queries.then(Instant::now);
        match transport {
            Transport::Udp => &self.metrics.udp_queries,
            Transport::Tcp => &self.metrics.tcp_queries,
        }
        .fetch_add(1, Ordering::Relaxed);
        let q = match parse_query(msg) {
            Incoming::Query(q) => q,
            Incoming::Reply(b) => {
                out.clear();
                out.extend_from_slice(&b);
                return Handled::Answered;
            }
            Incoming::Ignore => return Handled::Ignored,
        };
        let client = Client {
            addr,
            transport,
            limit: match transport {
                // The client's EDNS size, but never past max-udp-size.
                Transport::Udp => q.udp_limit().min(live.max_udp),
                Transport::Tcp => TCP_ANSWER_LIMIT,
            },
            start,
        };
        let o = match self.answer_locally(&live, &q) {
            Some(o) => o,
            None => match self.admit(addr) {
                Ok(t) => {
                    return Handled::Pending(Pending {
                        q,
                        client,
                        ticket: Admit::Now(t),
                    })
                }
                Err(full) => match (
                    self.waiting.clone().try_acquire_owned(),
                    self.admission.wait_place(addr.ip()),
                ) {
                    (Ok(place), Some(mine)) => {
                        return Handled::Pending(Pending {
                            q,
                            client,
                            ticket: Admit::Wait(place, mine),
                        })
                    }
                    _ => {
                        match full {
                            Full::Global => &self.metrics.overloaded,
                            Full::Client => &self.metrics.client_limited,
                        }
                        .fetch_add(1, Ordering::Relaxed);
                        self.overloaded(&q)
                    }
                },
            },
        };
        self.finish(&q, &o, &client, out);
        Handled::Answered
    }

    /// Swaps in a reloaded configuration. Queries in flight finish on the
    /// old one. The caches, in user space and in the kernel, lose what
    /// the new one would not serve (`stale_after`); the rest stays (the
    /// capacity and the listen addresses change only with a restart).
    pub(crate) fn reload(&self, next: Live) -> Dropped {
        self.admission.set_per_client(next.max_inflight_per_client);
        let next = Arc::new(next);
        let old = self.live.swap(next.clone());
        self.drop_cached(|key, lifetime, negative| {
            stale_after(&old, &next, key, lifetime, negative)
        })
    }

    /// `dnsfast cache flush`: drops what `what` covers from both caches.
    pub(crate) fn flush(&self, what: &Flush) -> Dropped {
        let mut zone = SuffixMap::new();
        if let Flush::Zone(k) = what {
            zone.insert(k, ());
        }
        self.drop_cached(|key, _, _| match what {
            Flush::All => true,
            Flush::Name(k) => key == k.as_slice(),
            Flush::Zone(_) => zone.longest(key).is_some(),
        })
    }

    /// Drops the answers `gone(name key, lifetime, negative)` picks, from
    /// the user-space cache and then from the kernel's: after this returns,
    /// neither serves them.
    fn drop_cached(&self, gone: impl Fn(&[u8], u32, bool) -> bool) -> Dropped {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let cache = self.cache.drop_where(|k, e| {
            gone(
                k.name(),
                e.lifetime,
                matches!(e.answer.cacheability, Cacheability::Negative(_)),
            )
        });
        let kernel = self.kernel_cache.get().map_or(0, |k| k.drop_where(&gone));
        Dropped { cache, kernel }
    }

    /// Changes the cluster domain's entries: `add` (key, action) first,
    /// then the `remove` keys.
    pub(crate) fn update_cluster(&self, add: &[(Vec<u8>, Action)], remove: &[Vec<u8>]) {
        let mut m = self.cluster.write().unwrap_or_else(|e| e.into_inner());
        for (k, a) in add {
            m.insert(k, *a);
        }
        for k in remove {
            m.remove(k);
        }
    }

    /// Swaps in a new block/allow table, keeping everything else (after
    /// `dnsfast block|allow` changed the kernel's).
    pub(crate) fn set_rules(&self, rules: &RuleSet) {
        let cur = self.live.load();
        self.live.store(Arc::new(Live {
            router: cur.router.clone(),
            patterns: Arc::new(suffix_map(rules)),
            tlds: cur.tlds.clone(),
            cache_settings: cur.cache_settings.clone(),
            log_queries: cur.log_queries,
            max_udp: cur.max_udp,
            max_inflight_per_client: cur.max_inflight_per_client,
        }));
    }
    /// Answers without leaving the process: the liveness query, a block
    /// pattern or the cache.
    pub(crate) fn answer_locally(&self, live: &Live, q: &ClientQuery) -> Option<Outcome> {
        if q.qclass == selfcheck::CLASS_CH && q.key == selfcheck::key() {
            return Some(self.made_here(q, ResponseCode::NoError, Source::Local));
        }
        let cluster = self.cluster.read().unwrap_or_else(|e| e.into_inner());
        let verdict = decide_in(&[&live.patterns, &cluster], &live.tlds, &q.key);
        drop(cluster);
        if let Some((Action::Block, _)) = verdict {
            self.metrics.blocked.fetch_add(1, Ordering::Relaxed);
            return Some(self.made_here(q, ResponseCode::NXDomain, Source::Blocked));
        }
        let (entry, age) = self.cache.get(&CacheKeyRef::of(q))?;
        Some(Outcome {
            answer: Arc::clone(&entry.answer),
            age,
            source: Source::Cache,
            zone: None,
            upstream: None,
        })
    }

    /// Slots for one more upstream query from `client`, or why not.
    pub(crate) fn admit(&self, client: SocketAddr) -> Result<Ticket, Full> {
        self.admission.admit(client.ip())
    }

    /// Slots for `client` within `wait` (in order of arrival), or `None`,
    /// counted, when its share or `max-inflight` stays full.
    pub(crate) async fn admit_within(
        &self,
        client: SocketAddr,
        wait: std::time::Duration,
    ) -> Option<Ticket> {
        match self.admission.admit_within(client.ip(), wait).await {
            Ok(t) => Some(t),
            Err(full) => {
                match full {
                    Full::Global => &self.metrics.overloaded,
                    Full::Client => &self.metrics.client_limited,
                }
                .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub(crate) fn overloaded(&self, q: &ClientQuery) -> Outcome {
        // REFUSED sends a stub to its next nameserver at once.
        self.made_here(q, ResponseCode::Refused, Source::Local)
    }

    /// Asks the zone's upstreams in policy order until one answers.
    /// SERVFAIL and REFUSED from one upstream move on to the next; only
    /// timeouts and network errors count against an upstream's health.
    pub(crate) async fn forward(&self, q: &ClientQuery, epoch: u64) -> Outcome {
        let live = self.live.load_full();
        let Some(zone) = live.router.route(&q.key) else {
            self.metrics.no_route.fetch_add(1, Ordering::Relaxed);
            return self.made_here(q, ResponseCode::Refused, Source::Local);
        };
        zone.queries.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<(Answer, SocketAddr)> = None;
        for up in zone.candidates() {
            let sent = Instant::now();
            let reply = match up.exchange(q).await {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("upstream {}: {e}", up.addr);
                    up.mark_failure(sent);
                    continue;
                }
            };
            up.mark_success();
            let Some(answer) = Answer::from_upstream(&reply, &live.cache_settings) else {
                log::debug!("upstream {}: an answer that does not parse", up.addr);
                continue;
            };
            if matches!(answer.rcode, ResponseCode::ServFail | ResponseCode::Refused) {
                last = Some((answer, up.addr));
                continue;
            }
            let answer = Arc::new(answer);
            if self.epoch.load(Ordering::Acquire) == epoch {
                self.cache.put(CacheKey::of(q), &answer);
            }
            return Outcome {
                answer,
                age: 0,
                source: Source::Upstream,
                zone: Some(zone.name.clone()),
                upstream: Some(up.addr),
            };
        }
        self.metrics
            .upstreams_failed
            .fetch_add(1, Ordering::Relaxed);
        let (answer, upstream) = match last {
            Some((a, addr)) => (a, Some(addr)),
            None => (Answer::synthesized(q, ResponseCode::ServFail), None),
        };
        Outcome {
            answer: Arc::new(answer),
            age: 0,
            source: if upstream.is_some() {
                Source::Upstream
            } else {
                Source::Local
            },
            zone: Some(zone.name.clone()),
            upstream,
        }
    }

    fn made_here(&self, q: &ClientQuery, rcode: ResponseCode, source: Source) -> Outcome {
        Outcome {
            answer: Arc::new(Answer::synthesized(q, rcode)),
            age: 0,
            source,
            zone: None,
            upstream: None,
        }
    }

    /// Renders `o` for `q` into `out`, counts it and, with
    /// `--log-queries`, logs it.
    pub(crate) fn finish(&self, q: &ClientQuery, o: &Outcome, c: &Client, out: &mut Vec<u8>) {
        let tc = o.answer.render(q, o.age, c.limit, out);
        self.metrics.answered(o.answer.rcode, tc);
        // Set at arrival exactly when the query log was on.
        if let Some(start) = c.start {
            log_query(q, o, c, start, tc);
        }
    }

    /// After a fresh upstream answer has gone out: hand it to the kernel's
    /// answer cache too (a map update, a system call, so it waits until the
    /// client has its answer).
    pub(crate) fn share_with_kernel(&self, q: &ClientQuery, o: &Outcome) {
        // Only `load` with a cache sets the kernel cache.
        if o.source != Source::Upstream || o.answer.cacheability == Cacheability::Never {
            return;
        }
        if let Some(k) = self.kernel_cache.get() {
            k.put(q, &o.answer);
        }
    }

    /// `finish` into a new buffer.
    pub(crate) fn answer_bytes(&self, q: &ClientQuery, o: &Outcome, c: &Client) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish(q, o, c, &mut out);
        out
    }
}

fn log_query(q: &ClientQuery, o: &Outcome, c: &Client, start: Instant, tc: bool) {
    let (client, transport) = (c.addr, c.transport);
    let source = match o.source {
        Source::Blocked => "blocked",
        Source::Cache => "hit",
        Source::Upstream => "miss",
        Source::Local => "local",
    };
    let proto = match transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let upstream = o
        .upstream
        .map(|u| u.to_string())
        .unwrap_or_else(|| "-".into());
    // One event with fields: `key=value` in text, an object in JSON.
    tracing::info!(
        target: "query",
        client = %client,
        proto = %proto,
        name = %q.name_text(),
        r#type = %q.type_text(),
        route = %o.zone.as_deref().unwrap_or("-"),
        upstream = %upstream,
        rcode = %rcode_name(o.answer.rcode),
        cache = %source,
        tc = tc.then_some(1),
        latency_us = start.elapsed().as_micros() as u64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        forward::{Policy, UpstreamSpec, ZoneSpec},
        Origin, PatternTable,
    };
    use dnsfast_common::{pattern::to_wire, suffix::name_key};

    fn live_with(zones: &[(&str, &str)], max_ttl: u32, neg_cache: bool) -> Live {
        let mut s = ForwardSettings {
            no_resolv: true,
            ..Default::default()
        };
        s.cache.max_ttl = max_ttl;
        s.cache.neg_cache = neg_cache;
        for (name, up) in zones {
            s.zones.push(ZoneSpec {
                name: name.to_string(),
                upstreams: vec![UpstreamSpec {
                    addr: up.parse().unwrap(),
                    timeout: std::time::Duration::from_secs(1),
                }],
                policy: Policy::Sequential,
                use_default: false,
                origin: Origin::Flag("--server".into()),
            });
        }
        live(&s, &crate::rules::rules_of(&PatternTable::default()), None).unwrap()
    }

    fn key(name: &str) -> Vec<u8> {
        name_key(&to_wire(name)).unwrap().0
    }

    /// What a reload drops: names whose route changed upstreams, answers
    /// kept longer than the new max-ttl, negatives when neg-cache goes
    /// off; and nothing else.
    #[test]
    fn a_reload_drops_exactly_what_the_new_config_would_not_serve() {
        let old = live_with(
            &[(".", "10.0.0.1:53"), ("corp.example", "10.0.0.2:53")],
            3600,
            true,
        );
        let moved = live_with(
            &[(".", "10.0.0.1:53"), ("corp.example", "10.0.0.3:53")],
            3600,
            true,
        );
        let (a, corp) = (key("www.example.com"), key("wiki.corp.example"));
        assert!(!stale_after(&old, &moved, &a, 60, false));
        assert!(stale_after(&old, &moved, &corp, 60, false));
        // The same upstreams under another zone layout are the same route.
        let split = live_with(
            &[
                (".", "10.0.0.1:53"),
                ("corp.example", "10.0.0.2:53"),
                ("com", "10.0.0.1:53"),
            ],
            3600,
            true,
        );
        assert!(!stale_after(&old, &split, &a, 60, false));
        let shorter = live_with(
            &[(".", "10.0.0.1:53"), ("corp.example", "10.0.0.2:53")],
            300,
            true,
        );
        assert!(stale_after(&old, &shorter, &a, 600, false));
        assert!(!stale_after(&old, &shorter, &a, 300, false));
        let no_neg = live_with(
            &[(".", "10.0.0.1:53"), ("corp.example", "10.0.0.2:53")],
            3600,
            false,
        );
        assert!(stale_after(&old, &no_neg, &a, 30, true));
        assert!(!stale_after(&old, &no_neg, &a, 30, false));
    }
}

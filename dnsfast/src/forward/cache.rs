//! The answer cache: normalised answers keyed by lower-cased name, type,
//! class and the DO/CD bits, with TTLs that count down as they are served.
//! Bounded in bytes (`cache.max-bytes`) as well as in entries: each entry
//! weighs its bytes, and at least `max-bytes / size`, so neither bound is
//! passed; an answer over `cache.max-entry-bytes` is served but not kept.
//!
//! quick_cache gives a sharded, concurrent cache with the
//! CLOCK-Pro policy, which keeps hot names through a scan of one-off names,
//! where plain LRU would flush them.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use quick_cache::{sync, DefaultHashBuilder, Equivalent, Lifecycle, Weighter};

use super::wire::{Answer, Cacheability, ClientQuery};
use crate::config::forward::CacheSettings;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    /// DO and CD: they change what an upstream returns.
    bits: u8,
}

impl CacheKey {
    /// The name in the cache's own form (`wire::ClientQuery::key`).
    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    pub(crate) fn of(q: &ClientQuery) -> Self {
        let r = CacheKeyRef::of(q);
        Self {
            name: r.name.into(),
            qtype: r.qtype,
            qclass: r.qclass,
            bits: r.bits,
        }
    }
}

/// The same key borrowing the query's name, for lookups: no allocation on
/// the per-query path. Its fields hash exactly like `CacheKey`'s.
#[derive(Hash)]
pub(crate) struct CacheKeyRef<'a> {
    name: &'a [u8],
    qtype: u16,
    qclass: u16,
    bits: u8,
}

impl<'a> CacheKeyRef<'a> {
    pub(crate) fn of(q: &'a ClientQuery) -> Self {
        Self {
            name: &q.key,
            qtype: q.qtype,
            qclass: q.qclass,
            bits: u8::from(q.dnssec_ok()) | u8::from(q.cd) << 1,
        }
    }
}

impl Equivalent<CacheKey> for CacheKeyRef<'_> {
    fn equivalent(&self, k: &CacheKey) -> bool {
        *self.name == *k.name && (self.qtype, self.qclass, self.bits) == (k.qtype, k.qclass, k.bits)
    }
}

pub(crate) struct Entry {
    pub(crate) answer: Arc<Answer>,
    stored: Instant,
    pub(crate) lifetime: u32,
    /// Its weight: bytes, at least the per-entry share.
    weight: u64,
}

/// What an entry costs beyond its key's and its answer's bytes: the
/// `Entry`, the `Answer`, two `Arc`s and the cache's slot, rounded up.
const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone)]
struct ByWeight;

impl Weighter<CacheKey, Arc<Entry>> for ByWeight {
    fn weight(&self, _: &CacheKey, v: &Arc<Entry>) -> u64 {
        v.weight
    }
}

#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<CacheKey, Arc<Entry>> for CountEvictions {
    type RequestState = ();
    fn begin_request(&self) -> Self::RequestState {}
    fn on_evict(&self, _: &mut (), _: CacheKey, _: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Inner = sync::Cache<CacheKey, Arc<Entry>, ByWeight, DefaultHashBuilder, CountEvictions>;

pub(crate) struct Cache {
    inner: Option<Inner>,
    evictions: CountEvictions,
    /// The least an entry weighs: `max-bytes / size`.
    floor: u64,
    max_entry_bytes: usize,
    /// Answers served but not kept, over `max-entry-bytes`.
    pub(crate) too_large: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) expired: AtomicU64,
}

impl Cache {
    pub(crate) fn new(settings: &CacheSettings) -> Self {
        let evictions = CountEvictions::default();
        let floor = settings.max_bytes / settings.size.max(1) as u64;
        let inner = (settings.size > 0).then(|| {
            Inner::with(
                settings.size,
                settings.max_bytes,
                ByWeight,
                DefaultHashBuilder::default(),
                evictions.clone(),
            )
        });
        Self {
            inner,
            evictions,
            floor,
            max_entry_bytes: settings.max_entry_bytes,
            too_large: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// A live entry and its age in whole seconds.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<(Arc<Entry>, u32)>
    where
        Q: std::hash::Hash + Equivalent<CacheKey> + ?Sized,
    {
        let inner = self.inner.as_ref()?;
        let found = inner.get(key).and_then(|e| {
            let age = e.stored.elapsed().as_secs();
            if age < e.lifetime as u64 {
                Some((e, age as u32))
            } else {
                inner.remove(key);
                self.expired.fetch_add(1, Ordering::Relaxed);
                None
            }
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `answer` if its cacheability allows.
    pub(crate) fn put(&self, key: CacheKey, answer: &Arc<Answer>) {
        let Some(inner) = &self.inner else { return };
        let lifetime = match answer.cacheability {
            Cacheability::Positive(t) | Cacheability::Negative(t) => t,
            Cacheability::Never => return,
        };
        if answer.wire.len() > self.max_entry_bytes {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let bytes = (key.name.len() + answer.wire.len() + answer.ttls.len() * 8) as u64;
        inner.insert(
            key,
            Arc::new(Entry {
                answer: Arc::clone(answer),
                stored: Instant::now(),
                lifetime,
                weight: (bytes + ENTRY_OVERHEAD).max(self.floor),
            }),
        );
    }

    /// Drops every entry `gone` picks; returns how many went.
    pub(crate) fn drop_where(&self, gone: impl Fn(&CacheKey, &Entry) -> bool) -> usize {
        let Some(inner) = &self.inner else { return 0 };
        let before = inner.len();
        inner.retain(|k, e| !gone(k, e));
        before.saturating_sub(inner.len())
    }

    /// What the entries weigh, in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| c.weight())
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |c| c.len())
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::wire::{parse_query, Incoming};
    use hickory_proto::{
        op::{Message, OpCode, Query, ResponseCode},
        rr::{Name, RData, Record, RecordType},
    };

    fn q(name: &str, dnssec_ok: bool) -> ClientQuery {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if dnssec_ok {
            let mut e = hickory_proto::op::Edns::new();
            e.set_dnssec_ok(true);
            m.set_edns(e);
        }
        match parse_query(&m.to_vec().unwrap()) {
            Incoming::Query(q) => *q,
            _ => unreachable!(),
        }
    }

    fn answer(q: &ClientQuery, ttl: u32, rcode: ResponseCode) -> Arc<Answer> {
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = rcode;
        m.add_query(q.query.clone());
        if rcode == ResponseCode::NoError {
            m.answers.push(Record::from_rdata(
                q.query.name().clone(),
                ttl,
                RData::A(std::net::Ipv4Addr::LOCALHOST.into()),
            ));
        }
        Arc::new(Answer::from_upstream(&m.to_vec().unwrap(), &CacheSettings::default()).unwrap())
    }

    #[test]
    fn borrowed_keys_find_owned_ones() {
        let c = Cache::new(&CacheSettings::default());
        let a = q("Web.Example.", true);
        c.put(CacheKey::of(&a), &answer(&a, 60, ResponseCode::NoError));
        assert!(c.get(&CacheKeyRef::of(&q("web.EXAMPLE.", true))).is_some());
        assert!(c.get(&CacheKeyRef::of(&q("web.example.", false))).is_none());
    }

    #[test]
    fn keyed_without_case_but_with_the_do_bit() {
        let c = Cache::new(&CacheSettings::default());
        let a = q("Web.Example.", false);
        c.put(CacheKey::of(&a), &answer(&a, 60, ResponseCode::NoError));
        assert!(c.get(&CacheKey::of(&q("wEB.example.", false))).is_some());
        assert!(c.get(&CacheKey::of(&q("web.example.", true))).is_none());
        assert_eq!(c.hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failures_and_negatives_are_not_stored_by_default() {
        let c = Cache::new(&CacheSettings::default());
        for rcode in [
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
            ResponseCode::Refused,
        ] {
            let a = q("x.example.", false);
            c.put(CacheKey::of(&a), &answer(&a, 60, rcode));
        }
        let z = q("zero.example.", false);
        c.put(CacheKey::of(&z), &answer(&z, 0, ResponseCode::NoError));
        assert!(c.is_empty());
    }

    #[test]
    fn entries_expire_with_their_ttl() {
        let c = Cache::new(&CacheSettings::default());
        let a = q("short.example.", false);
        c.put(CacheKey::of(&a), &answer(&a, 1, ResponseCode::NoError));
        let (_, age) = c.get(&CacheKey::of(&a)).unwrap();
        assert_eq!(age, 0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(c.get(&CacheKey::of(&a)).is_none());
        assert_eq!(c.expired.load(Ordering::Relaxed), 1);
        assert!(c.is_empty());
    }

    /// The bytes bound holds whatever the answers weigh, and an answer
    /// over the per-entry cap is not kept at all.
    #[test]
    fn bounded_in_bytes_and_per_entry() {
        let c = Cache::new(&CacheSettings {
            size: 100_000,
            max_bytes: 1 << 20,
            max_entry_bytes: 8192,
            ..Default::default()
        });
        let big = |name: &str, records: usize| {
            let a = q(name, false);
            let mut m = Message::response(1, OpCode::Query);
            m.add_query(a.query.clone());
            for i in 0..records {
                m.answers.push(Record::from_rdata(
                    a.query.name().clone(),
                    60,
                    RData::A(std::net::Ipv4Addr::from(i as u32).into()),
                ));
            }
            let wire = m.to_vec().unwrap();
            let ans = Answer::from_upstream(&wire, &CacheSettings::default()).unwrap();
            (a, Arc::new(ans))
        };
        for i in 0..2000 {
            let (a, ans) = big(&format!("n{i}.example."), 200); // about 3.2 KB
            c.put(CacheKey::of(&a), &ans);
        }
        assert!(c.bytes() <= 1 << 20, "{} bytes", c.bytes());
        assert!(c.len() > 100, "{} entries", c.len());
        let (a, huge) = big("huge.example.", 1000); // about 16 KB
        c.put(CacheKey::of(&a), &huge);
        assert!(c.get(&CacheKey::of(&a)).is_none());
        assert_eq!(c.too_large.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn drop_where_removes_what_it_picks() {
        let c = Cache::new(&CacheSettings::default());
        for n in ["a.one.", "b.one.", "a.two."] {
            let a = q(n, false);
            c.put(CacheKey::of(&a), &answer(&a, 60, ResponseCode::NoError));
        }
        let mut zone = dnsfast_common::suffix::SuffixMap::new();
        zone.insert(&q("one.", false).key, ());
        assert_eq!(c.drop_where(|k, _| zone.longest(k.name()).is_some()), 2);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn capacity_is_bounded_and_evictions_counted() {
        let c = Cache::new(&CacheSettings {
            size: 100,
            ..Default::default()
        });
        for i in 0..1000 {
            let a = q(&format!("n{i}.example."), false);
            c.put(CacheKey::of(&a), &answer(&a, 60, ResponseCode::NoError));
        }
        assert!(c.len() <= 110, "{}", c.len());
        assert!(c.evictions() >= 890, "{}", c.evictions());
        let off = Cache::new(&CacheSettings {
            size: 0,
            ..Default::default()
        });
        let a = q("a.example.", false);
        off.put(CacheKey::of(&a), &answer(&a, 60, ResponseCode::NoError));
        assert!(off.get(&CacheKey::of(&a)).is_none());
    }
}

//! The answer cache: normalised answers keyed by lower-cased name, type,
//! class and the DO/CD bits, with TTLs that count down as they are served.
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

use quick_cache::{sync, DefaultHashBuilder, Equivalent, Lifecycle, UnitWeighter};

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
    lifetime: u32,
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

type Inner = sync::Cache<CacheKey, Arc<Entry>, UnitWeighter, DefaultHashBuilder, CountEvictions>;

pub(crate) struct Cache {
    inner: Option<Inner>,
    evictions: CountEvictions,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) expired: AtomicU64,
}

impl Cache {
    pub(crate) fn new(settings: &CacheSettings) -> Self {
        let evictions = CountEvictions::default();
        let inner = (settings.size > 0).then(|| {
            Inner::with(
                settings.size,
                settings.size as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                evictions.clone(),
            )
        });
        Self {
            inner,
            evictions,
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
        inner.insert(
            key,
            Arc::new(Entry {
                answer: Arc::clone(answer),
                stored: Instant::now(),
                lifetime,
            }),
        );
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

//! Copies the answers the forwarder caches into the XDP program's answer
//! cache (`ANSWERS`), so that the next query for them is answered in the
//! kernel, in place, without reaching a socket. The kernel map is an LRU of
//! the same capacity as the forwarder's cache; its entries expire on their
//! own (the program compares their deadline with the clock).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use dnsfast_common::{
    answer::{
        is_negative, name_hash, pad_name, store_name, stored_name, AnswerKey, CachedAnswer,
        ANSWER_BODY_CAP, MAX_TTLS,
    },
    suffix::with_encoded,
};
use log::debug;

use super::wire::{Answer, Cacheability, ClientQuery};
use aya::maps::{HashMap, MapData};

/// The XDP program's `ANSWERS` map, handed over by the dataplane.
pub type AnswerMap = HashMap<MapData, AnswerKey, CachedAnswer>;

pub(crate) struct KernelCache {
    map: Mutex<AnswerMap>,
    pub(crate) stored: AtomicU64,
    /// Answers too large (body over 512 bytes, more than 16 TTLs) to hand
    /// to the kernel; user space keeps serving those.
    pub(crate) skipped: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl KernelCache {
    pub(crate) fn new(map: AnswerMap) -> Self {
        Self {
            map: Mutex::new(map),
            stored: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub(crate) fn put(&self, q: &ClientQuery, a: &Answer) {
        let Some((key, value)) = kernel_entry(q, a, monotonic_ns()) else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let inserted = match self.map.lock() {
            Ok(mut m) => m
                .insert(key, *value, 0)
                .map_err(|e| debug!("answer cache insert: {e}")),
            Err(_) => Err(()),
        };
        let counter = if inserted.is_ok() {
            &self.stored
        } else {
            &self.errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Deletes the entries `gone(name key, lifetime in s, negative)` picks;
    /// returns how many. A walk of the map, for reloads and flushes only.
    pub(crate) fn drop_where(&self, gone: impl Fn(&[u8], u32, bool) -> bool) -> usize {
        let Ok(mut m) = self.map.lock() else { return 0 };
        let mut name = [0u8; 256];
        let doomed: Vec<AnswerKey> = m
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, v)| {
                let len = stored_name(v, &mut name);
                let lifetime = v.expires_ns.saturating_sub(v.stored_ns) / 1_000_000_000;
                gone(
                    &name[..len],
                    lifetime.min(u32::MAX as u64) as u32,
                    is_negative(v),
                )
            })
            .map(|(k, _)| k)
            .collect();
        doomed.iter().filter(|k| m.remove(k).is_ok()).count()
    }
}

/// The clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// The kernel map entry for answer `a` to query `q`, stored at `now_ns`,
/// or `None` when it is not cacheable or does not fit the kernel's format.
pub fn kernel_entry(
    q: &ClientQuery,
    a: &Answer,
    now_ns: u64,
) -> Option<(AnswerKey, Box<CachedAnswer>)> {
    let lifetime = match a.cacheability {
        Cacheability::Positive(t) | Cacheability::Negative(t) => t,
        Cacheability::Never => return None,
    };
    // The program answers class IN only, and its key has no class: an
    // answer of another class must never stand for the IN one.
    if q.qclass != 1 {
        return None;
    }
    let qend = 12 + q.qname.len() + 4;
    let body = a.wire.get(qend..)?;
    if body.is_empty() || body.len() > ANSWER_BODY_CAP || a.ttls.len() > MAX_TTLS {
        return None;
    }
    if a.wire[4..6] != [0, 1] || !a.wire[12..12 + q.qname.len()].eq_ignore_ascii_case(&q.qname) {
        return None;
    }
    let mut v = Box::new(CachedAnswer::zeroed());
    let hash = with_encoded(&q.qname, |s, len| {
        pad_name(s);
        store_name(s, len, &mut v);
        name_hash(s, len)
    })
    .ok()?;
    v.stored_ns = now_ns;
    v.expires_ns = now_ns + lifetime as u64 * 1_000_000_000;
    v.body_len = body.len() as u32;
    v.body[..body.len()].copy_from_slice(body);
    v.flags = [a.wire[2] & !0x01, a.wire[3] & !0x10];
    v.counts.copy_from_slice(&a.wire[6..12]);
    v.nttl = a.ttls.len() as u32;
    for (i, &(off, ttl)) in a.ttls.iter().enumerate() {
        v.ttl_off[i] = (off - qend) as u16;
        v.ttl[i] = ttl;
    }
    let key = AnswerKey {
        hash,
        qtype: q.qtype,
        bits: u16::from(q.dnssec_ok()) | (u16::from(q.cd) << 1),
        _pad: 0,
    };
    Some((key, v))
}

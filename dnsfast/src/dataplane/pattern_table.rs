//! The kernel pattern table (`dnsfast_common::table`) as user space reads
//! and writes it: exact get, insert (cuckoo moves when both buckets are
//! full), remove, and the whole rule set. Generic over where the buckets
//! live, so the logic is unit-tested in memory and runs on the agent's maps
//! and on their pins alike.

use std::borrow::BorrowMut;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData, MapError};
use dnsfast_common::{
    name::MAX_LABELS,
    pattern::key_name,
    suffix::label_ends,
    table::{
        buckets_of, key_fingerprint, Bucket, Depths, LongKey, BUCKET_SLOTS, MAX_DEPTHS,
        SLOT_KEY_LEN,
    },
    Rule, KEY_DATA_LEN,
};

use super::cuckoo::{self, Place};
use crate::rules::RuleSet;

/// Where the table's three maps live.
pub(crate) trait Store {
    /// Bucket count minus one.
    fn mask(&self) -> u32;
    fn bucket(&self, i: u32) -> Result<Bucket>;
    fn set_bucket(&mut self, i: u32, b: &Bucket) -> Result<()>;
    fn long(&self, fp: u64) -> Result<Option<LongKey>>;
    fn set_long(&mut self, fp: u64, k: Option<&LongKey>) -> Result<()>;
    fn depths(&self) -> Result<Depths>;
    fn set_depths(&mut self, d: &Depths) -> Result<()>;
}

pub(crate) struct Table<S>(pub S);

impl cuckoo::Slots for Bucket {
    const SLOTS: usize = BUCKET_SLOTS;
    fn is_free(&self, slot: usize) -> bool {
        self.rule[slot].action == 0
    }
    fn fp(&self, slot: usize) -> u64 {
        self.fp[slot]
    }
    fn copy_slot(&mut self, to: usize, src: &Self, from: usize) {
        copy_slot(self, to, src, from);
    }
}

impl<S: Store> cuckoo::Store<Bucket> for Table<S> {
    fn read(&self, i: u32) -> Result<Bucket> {
        self.0.bucket(i)
    }
    fn write(&mut self, i: u32, b: &Bucket) -> Result<()> {
        self.0.set_bucket(i, b)
    }
}

fn fingerprint(key: &[u8]) -> Result<u64> {
    if key.len() > KEY_DATA_LEN {
        bail!("pattern key of {} bytes is too long", key.len());
    }
    key_fingerprint(key).ok_or_else(|| anyhow!("not a label sequence: {key:?}"))
}

fn long_key(key: &[u8]) -> LongKey {
    let mut k = LongKey {
        bytes: [0; KEY_DATA_LEN],
    };
    k.bytes[..key.len()].copy_from_slice(key);
    k
}

impl<S: Store> Table<S> {
    /// Where `key` is stored, if it is.
    fn find(&self, key: &[u8], fp: u64) -> Result<Option<(Place, Rule)>> {
        let (b1, b2) = buckets_of(fp, self.0.mask());
        for b in [b1, b2] {
            let bucket = self.0.bucket(b)?;
            for slot in 0..BUCKET_SLOTS {
                if self.holds(&bucket, slot, key, fp)? {
                    return Ok(Some((Place { bucket: b, slot }, bucket.rule[slot])));
                }
            }
        }
        Ok(None)
    }

    /// Whether slot `slot` of `bucket` holds exactly `key`.
    fn holds(&self, bucket: &Bucket, slot: usize, key: &[u8], fp: u64) -> Result<bool> {
        let r = bucket.rule[slot];
        if r.action == 0 || bucket.fp[slot] != fp || r.key_len as usize != key.len() {
            return Ok(false);
        }
        let head = key.len().min(SLOT_KEY_LEN);
        if bucket.key[slot][..head] != key[..head] {
            return Ok(false);
        }
        if key.len() <= SLOT_KEY_LEN {
            return Ok(true);
        }
        Ok(self
            .0
            .long(fp)?
            .is_some_and(|l| l.bytes[..key.len()] == *key))
    }

    /// The rule stored for exactly `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Rule>> {
        Ok(self.find(key, fingerprint(key)?)?.map(|(_, r)| r))
    }

    /// The longest stored key that is a prefix of `name_key` at a label
    /// boundary, and its rule: what the XDP program finds. (The root, the
    /// empty key, is never a pattern.)
    pub(crate) fn longest(&self, name_key: &[u8]) -> Result<Option<(Vec<u8>, Rule)>> {
        let (ends, n) = label_ends(name_key);
        for j in (1..=n).rev() {
            let k = &name_key[..ends[j] as usize];
            if let Some(r) = self.get(k)? {
                return Ok(Some((k.to_vec(), r)));
            }
        }
        Ok(None)
    }

    /// Stores `rule` for `key`; true if the key is new. A changed rule is
    /// one slot write, so a name switches verdict at once.
    pub(crate) fn insert(&mut self, key: &[u8], rule: Rule) -> Result<bool> {
        let fp = fingerprint(key)?;
        if let Some((at, _)) = self.find(key, fp)? {
            let mut b = self.0.bucket(at.bucket)?;
            b.rule[at.slot].action = rule.action;
            self.0.set_bucket(at.bucket, &b)?;
            return Ok(false);
        }
        self.check_collision(key, fp)?;
        // Checked before anything is written.
        let depths = self.depths_with(key, 1)?;
        if key.len() > SLOT_KEY_LEN {
            // The tail first: the kernel must never find a slot whose tail
            // is missing (it would only fail open, but still).
            self.0.set_long(fp, Some(&long_key(key)))?;
        }
        let mut entry = Bucket::EMPTY;
        entry.fp[0] = fp;
        entry.rule[0] = Rule {
            action: rule.action,
            key_len: key.len() as u32,
        };
        let head = key.len().min(SLOT_KEY_LEN);
        entry.key[0][..head].copy_from_slice(&key[..head]);
        if let Err(e) = self.place(&entry) {
            if key.len() > SLOT_KEY_LEN {
                let _ = self.0.set_long(fp, None);
            }
            return Err(e);
        }
        // A new label count is listed after its slot is written: a lookup
        // never probes for a pattern that is not there yet, and never skips
        // one that is.
        self.0.set_depths(&depths)?;
        Ok(true)
    }

    /// Two different keys with one fingerprint cannot both be in the table
    /// (the kernel confirms only the first it meets). 64-bit fingerprints
    /// make this a one in 10^10 event for 100k patterns; it is refused
    /// rather than silently shadowed.
    fn check_collision(&self, key: &[u8], fp: u64) -> Result<()> {
        let (b1, b2) = buckets_of(fp, self.0.mask());
        for b in [b1, b2] {
            let bucket = self.0.bucket(b)?;
            for slot in 0..BUCKET_SLOTS {
                let r = bucket.rule[slot];
                if r.action != 0 && bucket.fp[slot] == fp && r.key_len as usize == key.len() {
                    bail!(
                        "pattern {} has the same table fingerprint as one already stored; \
                         the table cannot hold both",
                        key_name(key)
                    );
                }
            }
        }
        if key.len() > SLOT_KEY_LEN {
            if let Some(l) = self.0.long(fp)? {
                if l.bytes[..] != long_key(key).bytes[..] {
                    bail!(
                        "pattern {} has the same table fingerprint as a long pattern already \
                         stored; the table cannot hold both",
                        key_name(key)
                    );
                }
            }
        }
        Ok(())
    }

    /// Puts the entry in slot 0 of `entry` into a free slot of one of its
    /// buckets, moving others to their other bucket when both are full.
    fn place(&mut self, entry: &Bucket) -> Result<()> {
        let mask = self.0.mask();
        let other = |fp, b| {
            let (x, y) = buckets_of(fp, mask);
            if x == b {
                y
            } else {
                x
            }
        };
        if !cuckoo::place(self, entry, buckets_of(entry.fp[0], mask), other)? {
            bail!(
                "the pattern table is full around this pattern ({} buckets of {BUCKET_SLOTS}); \
                 raise xdp.max-patterns",
                mask as u64 + 1
            );
        }
        Ok(())
    }

    /// Removes `key`; false if it was not there.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Result<bool> {
        let fp = fingerprint(key)?;
        let Some((at, _)) = self.find(key, fp)? else {
            return Ok(false);
        };
        let mut b = self.0.bucket(at.bucket)?;
        copy_slot(&mut b, at.slot, &Bucket::EMPTY, 0);
        self.0.set_bucket(at.bucket, &b)?;
        if key.len() > SLOT_KEY_LEN {
            self.0.set_long(fp, None)?;
        }
        let depths = self.depths_with(key, -1)?;
        self.0.set_depths(&depths)?;
        Ok(true)
    }

    /// The depth index with one more (or one fewer) pattern of `key`'s
    /// label count; an error if that makes more label counts than the
    /// kernel probes.
    fn depths_with(&self, key: &[u8], delta: i32) -> Result<Depths> {
        let d = label_ends(key).1.min(MAX_LABELS - 1);
        let mut depths = self.0.depths()?;
        depths.patterns[d] = depths.patterns[d].saturating_add_signed(delta);
        if !depths.index() {
            bail!(
                "pattern {} would make {} different label counts; the kernel table probes at \
                 most {MAX_DEPTHS}",
                key_name(key),
                MAX_DEPTHS + 1
            );
        }
        Ok(depths)
    }

    /// Every rule in the table.
    pub(crate) fn rules(&self) -> Result<RuleSet> {
        let mut out = RuleSet::new();
        for b in 0..=self.0.mask() {
            let bucket = self.0.bucket(b)?;
            for slot in 0..BUCKET_SLOTS {
                let r = bucket.rule[slot];
                if r.action == 0 {
                    continue;
                }
                let len = (r.key_len as usize).min(KEY_DATA_LEN);
                let key = if len <= SLOT_KEY_LEN {
                    bucket.key[slot][..len].to_vec()
                } else {
                    let l = self.0.long(bucket.fp[slot])?.with_context(|| {
                        format!("a long pattern's tail is missing from bucket {b}")
                    })?;
                    l.bytes[..len].to_vec()
                };
                // A moved entry can be seen twice while an insert runs.
                out.insert(key, r);
            }
        }
        Ok(out)
    }
}

fn copy_slot(dst: &mut Bucket, d: usize, src: &Bucket, s: usize) {
    dst.fp[d] = src.fp[s];
    dst.rule[d] = src.rule[s];
    dst.key[d] = src.key[s];
}

/// The table in plain memory, for tests.
/// What a reconcile changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "+{} added, {} changed, -{} removed",
            self.added, self.changed, self.removed
        )
    }
}

/// The pattern table's maps (`PATTERNS`, `PATTERN_DEPTHS`,
/// `PATTERN_TAILS`).
pub(crate) struct MapStore<T> {
    pub(crate) buckets: Array<T, Bucket>,
    pub(crate) depths: Array<T, Depths>,
    pub(crate) tails: HashMap<T, u64, LongKey>,
}

/// The kernel pattern table.
pub(crate) type Patterns<T> = Table<MapStore<T>>;

impl<T: BorrowMut<MapData>> Store for MapStore<T> {
    fn mask(&self) -> u32 {
        self.buckets.len().saturating_sub(1)
    }
    fn bucket(&self, i: u32) -> Result<Bucket> {
        self.buckets
            .get(&i, 0)
            .with_context(|| format!("reading bucket {i} of the PATTERNS map"))
    }
    fn set_bucket(&mut self, i: u32, b: &Bucket) -> Result<()> {
        self.buckets
            .set(i, b, 0)
            .with_context(|| format!("writing bucket {i} of the PATTERNS map"))
    }
    fn long(&self, fp: u64) -> Result<Option<LongKey>> {
        match self.tails.get(&fp, 0) {
            Ok(k) => Ok(Some(k)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading the PATTERN_TAILS map"),
        }
    }
    fn set_long(&mut self, fp: u64, k: Option<&LongKey>) -> Result<()> {
        match k {
            Some(k) => self
                .tails
                .insert(fp, k, 0)
                .map_err(|e| anyhow!("writing the PATTERN_TAILS map: {e}")),
            None => match self.tails.remove(&fp) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(anyhow!("removing from the PATTERN_TAILS map: {e}")),
            },
        }
    }
    fn depths(&self) -> Result<Depths> {
        self.depths
            .get(&0, 0)
            .context("reading the PATTERN_DEPTHS map")
    }
    fn set_depths(&mut self, d: &Depths) -> Result<()> {
        self.depths
            .set(0, d, 0)
            .context("writing the PATTERN_DEPTHS map")
    }
}

/// Makes the pattern table hold exactly `want`: new and changed rules
/// first, then the removals, so a rule present before and after is never
/// missing, and a name covered by a changed rule switches in one write.
pub(crate) fn reconcile_rules<S: Store>(t: &mut Table<S>, want: &RuleSet) -> Result<Diff> {
    let have = t.rules()?;
    let mut d = Diff::default();
    for (k, r) in want {
        match have.get(k) {
            Some(old) if old == r => continue,
            Some(_) => d.changed += 1,
            None => d.added += 1,
        }
        t.insert(k, *r)
            .with_context(|| format!("writing pattern {} to the PATTERNS map", key_name(k)))?;
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        t.remove(k)
            .with_context(|| format!("removing pattern {} from the PATTERNS map", key_name(k)))?;
        d.removed += 1;
    }
    Ok(d)
}

#[cfg(test)]
pub(crate) struct MemStore {
    pub(crate) buckets: Vec<Bucket>,
    pub(crate) long: std::collections::HashMap<u64, LongKey>,
    pub(crate) depths: Depths,
}

#[cfg(test)]
impl MemStore {
    pub(crate) fn new(buckets: u32) -> Self {
        Self {
            buckets: vec![Bucket::EMPTY; buckets as usize],
            long: std::collections::HashMap::new(),
            depths: Depths::EMPTY,
        }
    }
}

#[cfg(test)]
impl Store for MemStore {
    fn mask(&self) -> u32 {
        self.buckets.len() as u32 - 1
    }
    fn bucket(&self, i: u32) -> Result<Bucket> {
        Ok(self.buckets[i as usize])
    }
    fn set_bucket(&mut self, i: u32, b: &Bucket) -> Result<()> {
        self.buckets[i as usize] = *b;
        Ok(())
    }
    fn long(&self, fp: u64) -> Result<Option<LongKey>> {
        Ok(self.long.get(&fp).copied())
    }
    fn set_long(&mut self, fp: u64, k: Option<&LongKey>) -> Result<()> {
        match k {
            Some(k) => self.long.insert(fp, *k),
            None => self.long.remove(&fp),
        };
        Ok(())
    }
    fn depths(&self) -> Result<Depths> {
        Ok(self.depths)
    }
    fn set_depths(&mut self, d: &Depths) -> Result<()> {
        self.depths = *d;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dnsfast_common::pattern::{rule_entry, Action, Pattern};

    fn key(name: &str) -> Vec<u8> {
        rule_entry(&Pattern::parse(name).unwrap(), Action::Block).0
    }

    fn rule(action: Action) -> Rule {
        Rule {
            action: action.code(),
            key_len: 0,
        }
    }

    #[test]
    fn insert_get_remove_round_trip() {
        let mut t = Table(MemStore::new(8));
        let k = key("com.svc.cluster.local");
        assert!(t.insert(&k, rule(Action::Block)).unwrap());
        assert!(!t.insert(&k, rule(Action::Allow)).unwrap(), "an update");
        let got = t.get(&k).unwrap().unwrap();
        assert_eq!(
            (got.action, got.key_len as usize),
            (Action::Allow.code(), k.len())
        );
        assert_eq!(t.0.depths.patterns[4], 1);
        assert_eq!(t.get(&key("org.svc.cluster.local")).unwrap(), None);
        assert!(t.remove(&k).unwrap());
        assert!(!t.remove(&k).unwrap());
        assert_eq!(t.get(&k).unwrap(), None);
        assert_eq!(t.0.depths.patterns[4], 0);
    }

    #[test]
    fn long_keys_keep_their_tail_apart() {
        let mut t = Table(MemStore::new(8));
        let name = format!("{}.{}.example", "a".repeat(40), "b".repeat(30));
        let k = key(&name);
        assert!(k.len() > SLOT_KEY_LEN);
        t.insert(&k, rule(Action::Block)).unwrap();
        assert_eq!(t.0.long.len(), 1);
        let rules = t.rules().unwrap();
        assert_eq!(rules.keys().next().unwrap(), &k);
        // Same first 48 bytes, another tail: a different pattern.
        let other = key(&format!("{}.{}.example", "c".repeat(40), "b".repeat(30)));
        assert_eq!(t.get(&other).unwrap(), None);
        t.remove(&k).unwrap();
        assert!(t.0.long.is_empty());
    }

    #[test]
    fn a_full_table_moves_entries_and_finds_them_all() {
        // 64 buckets of 4: fill to 90 % of the slots.
        let mut t = Table(MemStore::new(64));
        let keys: Vec<Vec<u8>> = (0..230).map(|i| key(&format!("n{i}.example"))).collect();
        for k in &keys {
            t.insert(k, rule(Action::Block)).unwrap();
        }
        for k in &keys {
            assert!(t.get(k).unwrap().is_some(), "{}", key_name(k));
        }
        assert_eq!(t.rules().unwrap().len(), keys.len());
        // Past what two buckets per key can hold: a clear error.
        let mut t = Table(MemStore::new(2));
        let mut err = None;
        for i in 0..9 {
            if let Err(e) = t.insert(&key(&format!("x{i}.example")), rule(Action::Block)) {
                err = Some(e);
                break;
            }
        }
        assert!(err.unwrap().to_string().contains("table is full"));
    }

    #[test]
    fn longest_is_the_longest_stored_prefix() {
        let mut t = Table(MemStore::new(16));
        t.insert(&key("svc.cluster.local"), rule(Action::Block))
            .unwrap();
        t.insert(&key("ok.svc.cluster.local"), rule(Action::Allow))
            .unwrap();
        let name = key("a.ok.svc.cluster.local");
        let (k, r) = t.longest(&name).unwrap().unwrap();
        assert_eq!(
            (key_name(&k).as_str(), r.action),
            ("ok.svc.cluster.local", Action::Allow.code())
        );
        let (k, _) = t.longest(&key("xok.svc.cluster.local")).unwrap().unwrap();
        assert_eq!(key_name(&k), "svc.cluster.local");
        assert!(t.longest(&key("example.org")).unwrap().is_none());
    }

    #[test]
    fn a_seventeenth_label_count_is_refused_and_changes_nothing() {
        let mut t = Table(MemStore::new(64));
        let name = |labels: usize| vec!["a"; labels].join(".");
        for n in 1..=MAX_DEPTHS {
            t.insert(&key(&name(n)), rule(Action::Block)).unwrap();
        }
        // One more of a label count already in use is fine.
        t.insert(&key("b.a"), rule(Action::Block)).unwrap();
        let before = t.rules().unwrap();
        let e = t
            .insert(&key(&name(MAX_DEPTHS + 1)), rule(Action::Block))
            .unwrap_err()
            .to_string();
        assert!(e.contains("17 different label counts"), "{e}");
        assert_eq!(t.rules().unwrap(), before);
        assert_eq!(t.0.depths().unwrap().count as usize, MAX_DEPTHS);
        // Removing the last pattern of a count frees its place.
        assert!(t.remove(&key(&name(3))).unwrap());
        t.insert(&key(&name(MAX_DEPTHS + 1)), rule(Action::Block))
            .unwrap();
    }
}

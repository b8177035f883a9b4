//! The pattern and TLD tables as both halves of dnsfast touch them: the
//! agent on the maps it loaded, the control CLI on their pins. Reading,
//! diffing and reconciling live here once.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use dnsfast_common::{
    labels::LabelBucket,
    pattern::{key_name, rule_entry, Action},
    suffix::SuffixMap,
    table::{Bucket, Depths, LongKey, MAP_PATTERN_DEPTHS, MAP_PATTERN_TAILS},
    Counters, Rule, ACTION_SUFFIX, ACTION_SUFFIX_NS, MAP_COUNTERS, MAP_NAMESPACES, MAP_PATTERNS,
    MAP_TLDS,
};

use crate::config::PatternTable;
use crate::labels::LabelTable;
use crate::table::{Store, Table};

/// Pattern table contents: label-reversed key bytes → rule.
pub type RuleSet = BTreeMap<Vec<u8>, Rule>;

/// The pattern table's maps (`PATTERNS`, `PATTERN_DEPTHS`,
/// `PATTERN_TAILS`).
pub struct MapStore<T> {
    pub buckets: Array<T, Bucket>,
    pub depths: Array<T, Depths>,
    pub tails: HashMap<T, u64, LongKey>,
}

/// The kernel pattern table.
pub type Patterns<T> = Table<MapStore<T>>;

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
/// A set of labels (`TLDS`, `NAMESPACES`): buckets of label keys.
pub type LabelSet<T> = crate::labels::LabelTable<Array<T, LabelBucket>>;

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

/// What a reconcile changed in each kernel table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub patterns: Diff,
    pub namespaces: Diff,
    pub tlds: Diff,
}

impl std::fmt::Display for TableDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "patterns {}; namespaces {}; TLDs {}",
            self.patterns, self.namespaces, self.tlds
        )
    }
}

/// The labels of a label set (`TLDS`, `NAMESPACES`).
pub fn read_labels<T: BorrowMut<MapData>>(m: &LabelSet<T>) -> Result<BTreeSet<String>> {
    m.labels()
}

/// The rules a config's pattern list puts in the kernel table.
pub fn rules_of(patterns: &PatternTable) -> RuleSet {
    patterns.iter().map(|(p, a)| rule_entry(p, a)).collect()
}

/// The forwarder's view of the same rules.
pub fn suffix_map(rules: &RuleSet) -> SuffixMap<Action> {
    let mut m = SuffixMap::new();
    for (k, r) in rules {
        if let Some(a) = Action::from_code(r.action) {
            m.insert(k, a);
        }
    }
    m
}

/// The kernel form of a rule set: the search suffixes one label below a
/// common parent P (auto mode's `<ns>.svc.<cluster domain>`, one per
/// namespace) leave the table; P is marked `ACTION_SUFFIX_NS` and their first
/// labels go into the namespace set. A thousand namespaces then cost one
/// table entry and a label-set lookup instead of a thousand entries.
///
/// Exact: a name the table sends to P has no rule longer than P covering
/// it, so its longest suffix rule is `<L>.P` when its next label L is in
/// the set, else P, as before. Only plain suffix children fold (a block or
/// allow at `<L>.P` stays in the table and, being longer, wins there), only
/// under the parent with the most of them, and only from two children up.
pub fn fold_namespaces(rules: &RuleSet) -> (RuleSet, BTreeSet<String>) {
    let is_suffix = |r: &Rule| r.action == ACTION_SUFFIX;
    // parent key -> labels of its one-label-longer suffix children
    let mut children: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
    for (k, r) in rules {
        if !is_suffix(r) {
            continue;
        }
        // The last label of the key is the first label of the name.
        let labels = label_starts(k);
        if let Some(&last) = labels.last() {
            let parent = &k[..last];
            if !parent.is_empty() && rules.get(parent).is_some_and(is_suffix) {
                children.entry(parent).or_default().push(&k[last..]);
            }
        }
    }
    let Some((parent, kids)) = children
        .into_iter()
        .filter(|(_, v)| v.len() >= 2)
        .max_by_key(|(p, v)| (v.len(), std::cmp::Reverse(p.len())))
    else {
        return (rules.clone(), BTreeSet::new());
    };
    let mut folded = rules.clone();
    let mut names = BTreeSet::new();
    for label in kids {
        let mut k = parent.to_vec();
        k.extend_from_slice(label);
        folded.remove(&k);
        names.insert(String::from_utf8_lossy(&label[1..]).into_owned());
    }
    if let Some(r) = folded.get_mut(parent) {
        r.action = ACTION_SUFFIX_NS;
    }
    (folded, names)
}

/// The rule set a folded table and namespace set stand for (what the
/// forwarder and `status` use).
pub fn unfold_namespaces(folded: &RuleSet, namespaces: &BTreeSet<String>) -> RuleSet {
    let mut out = folded.clone();
    for (k, r) in folded {
        if r.action != ACTION_SUFFIX_NS {
            continue;
        }
        out.insert(
            k.clone(),
            Rule {
                action: ACTION_SUFFIX,
                key_len: r.key_len,
            },
        );
        for ns in namespaces {
            let mut key = k.clone();
            key.push(ns.len() as u8);
            key.extend_from_slice(ns.as_bytes());
            out.entry(key).or_insert(Rule {
                action: ACTION_SUFFIX,
                key_len: (k.len() + 1 + ns.len()) as u32,
            });
        }
    }
    out
}

/// Where each label starts in a label-reversed key.
fn label_starts(key: &[u8]) -> Vec<usize> {
    let mut out = vec![];
    let mut i = 0;
    while i < key.len() {
        out.push(i);
        i += 1 + key[i] as usize;
    }
    out
}

/// Makes the pattern table hold exactly `want`: new and changed rules
/// first, then the removals, so a rule present before and after is never
/// missing, and a name covered by a changed rule switches in one write.
pub fn reconcile_rules<S: Store>(t: &mut Table<S>, want: &RuleSet) -> Result<Diff> {
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

/// An exclusive `flock` on `dir`, released when dropped: the pattern
/// table's writers (the agent, `dnsfast block|allow`) take turns, since a
/// cuckoo insert moves entries other writers might be moving too.
pub fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", dir.display()))
}

/// Adds the labels of `want` the set lacks; returns how many.
pub fn add_labels<T: BorrowMut<MapData>>(
    m: &mut LabelSet<T>,
    want: &BTreeSet<String>,
) -> Result<usize> {
    let mut added = 0;
    for label in want {
        if m.insert(label)
            .with_context(|| format!("writing '{label}' to a label set (TLDS or NAMESPACES)"))?
        {
            added += 1;
        }
    }
    Ok(added)
}

/// Removes the labels not in `want`; returns how many.
pub fn remove_other_labels<T: BorrowMut<MapData>>(
    m: &mut LabelSet<T>,
    want: &BTreeSet<String>,
) -> Result<usize> {
    let gone: Vec<String> = m
        .labels()?
        .into_iter()
        .filter(|l| !want.contains(l))
        .collect();
    for l in &gone {
        m.remove(l)
            .with_context(|| format!("removing '{l}' from a label set"))?;
    }
    Ok(gone.len())
}

/// The `COUNTERS` map summed over CPUs.
pub fn sum_counters<T: Borrow<MapData>>(a: &PerCpuArray<T, Counters>) -> Result<Counters> {
    let v = a.get(&0, 0).context("reading the COUNTERS map")?;
    Ok(Counters::sum(v.iter()))
}

/// The maps `dnsfast load` pinned, opened by the control CLI.
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    /// The pin directory, or a clear error when nothing is loaded there.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(MAP_PATTERNS.to_ascii_lowercase()).exists() {
            bail!(
                "nothing loaded: no dnsfast maps pinned in {} (is `dnsfast load` running{}?)",
                dir.display(),
                if dir == Path::new(dnsfast_common::PIN_DIR) {
                    String::new()
                } else {
                    format!(", with --pin-dir {}", dir.display())
                }
            );
        }
        crate::bpf::require_root("working on the pinned maps")?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub fn map(&self, name: &str) -> Result<Map> {
        let p = self.dir.join(name.to_ascii_lowercase());
        let data = MapData::from_pin(&p)
            .with_context(|| format!("opening the pinned map {}", p.display()))?;
        Ok(Map::from_map_data(data)?)
    }

    /// The pinned pattern table. Writers hold [`Pins::lock`] first.
    pub fn patterns(&self) -> Result<Patterns<MapData>> {
        Ok(Table(MapStore {
            buckets: Array::try_from(self.map(MAP_PATTERNS)?)?,
            depths: Array::try_from(self.map(MAP_PATTERN_DEPTHS)?)?,
            tails: HashMap::try_from(self.map(MAP_PATTERN_TAILS)?)?,
        }))
    }

    /// Serializes the writers of the pinned pattern table (the agent and
    /// `dnsfast block|allow`): held until dropped.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        lock_dir(&self.dir)
    }

    pub fn tlds(&self) -> Result<LabelSet<MapData>> {
        Ok(LabelTable(Array::try_from(self.map(MAP_TLDS)?)?))
    }

    pub fn namespaces(&self) -> Result<LabelSet<MapData>> {
        Ok(LabelTable(Array::try_from(self.map(MAP_NAMESPACES)?)?))
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        sum_counters(&PerCpuArray::try_from(self.map(MAP_COUNTERS)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn table(rules: &[(&str, Action)]) -> RuleSet {
        let mut t = PatternTable::default();
        for (p, a) in rules {
            t.add(p, *a, Origin::Flag("t".into())).unwrap();
        }
        rules_of(&t)
    }

    #[test]
    fn namespace_suffixes_fold_into_a_set_and_back() {
        let full = table(&[
            ("default.svc.cluster.local", Action::Suffix),
            ("dev.svc.cluster.local", Action::Suffix),
            ("kube-system.svc.cluster.local", Action::Suffix),
            ("svc.cluster.local", Action::Suffix),
            ("cluster.local", Action::Suffix),
            ("compute.internal", Action::Suffix),
            ("us-west-2.compute.internal", Action::Suffix),
            // A hand rule at a namespace's place stays in the table.
            ("prod.svc.cluster.local", Action::Block),
        ]);
        let (folded, ns) = fold_namespaces(&full);
        assert_eq!(
            ns.iter().map(String::as_str).collect::<Vec<_>>(),
            ["default", "dev", "kube-system"]
        );
        let names: BTreeMap<String, u32> = folded
            .iter()
            .map(|(k, r)| (key_name(k), r.action))
            .collect();
        assert_eq!(names["svc.cluster.local"], ACTION_SUFFIX_NS);
        assert_eq!(names["cluster.local"], ACTION_SUFFIX);
        assert_eq!(names["prod.svc.cluster.local"], Action::Block.code());
        assert_eq!(names["us-west-2.compute.internal"], ACTION_SUFFIX);
        assert!(!names.contains_key("dev.svc.cluster.local"));
        assert_eq!(folded.len(), full.len() - 3);
        assert_eq!(unfold_namespaces(&folded, &ns), full);
        // Nothing to fold: unchanged.
        let few = table(&[("a.example", Action::Suffix), ("example", Action::Suffix)]);
        assert_eq!(fold_namespaces(&few), (few.clone(), BTreeSet::new()));
    }

    #[test]
    fn rules_round_trip_through_the_suffix_map() {
        let mut t = PatternTable::default();
        t.add(
            "com.svc.cluster.local",
            Action::Block,
            Origin::Flag("t".into()),
        )
        .unwrap();
        t.add(
            "ok.com.svc.cluster.local",
            Action::Allow,
            Origin::Flag("t".into()),
        )
        .unwrap();
        let rules = rules_of(&t);
        assert_eq!(rules.len(), 2);
        let names: Vec<String> = rules.keys().map(|k| key_name(k)).collect();
        assert!(names.contains(&"com.svc.cluster.local".to_string()));
        let m = suffix_map(&rules);
        assert_eq!(m.len(), 2);
    }
}

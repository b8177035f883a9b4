//! The pattern and TLD tables as both halves of dnsfast touch them: the
//! agent on the maps it loaded, the control CLI on their pins. Reading,
//! diffing and reconciling live here once.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::{BTreeMap, BTreeSet, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use dnsfast_common::{
    pattern::{key_name, rule_for, Action},
    suffix::SuffixMap,
    Counters, Rule, TldKey, KEY_DATA_LEN, MAP_COUNTERS, MAP_PATTERNS, MAP_TLDS,
};

use crate::config::PatternTable;

/// Trie contents: label-reversed key bytes → rule.
pub type RuleSet = BTreeMap<Vec<u8>, Rule>;

pub type Trie<T> = LpmTrie<T, [u8; KEY_DATA_LEN], Rule>;
pub type Tlds<T> = HashMap<T, TldKey, u32>;

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

/// The rules a pattern table puts in the trie.
pub fn rules_of(patterns: &PatternTable) -> RuleSet {
    patterns
        .iter()
        .map(|(p, a)| {
            let (data, len) = p.key();
            (data[..len].to_vec(), rule_for(p, a))
        })
        .collect()
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

pub fn trie_key(bytes: &[u8]) -> Key<[u8; KEY_DATA_LEN]> {
    let mut data = [0u8; KEY_DATA_LEN];
    data[..bytes.len()].copy_from_slice(bytes);
    Key::new(bytes.len() as u32 * 8, data)
}

/// Every rule in the trie.
pub fn read_rules<T: Borrow<MapData>>(t: &Trie<T>) -> Result<RuleSet> {
    let mut out = RuleSet::new();
    for item in t.iter() {
        let (k, r) = item.context("reading the PATTERNS map")?;
        let len = (k.prefix_len() / 8) as usize;
        out.insert(k.data()[..len.min(KEY_DATA_LEN)].to_vec(), r);
    }
    Ok(out)
}

/// Makes the trie hold exactly `want`: new and changed rules first, then
/// the removals, so a rule present before and after is never missing, and
/// a name covered by a changed rule switches in one map update.
pub fn reconcile_rules<T: BorrowMut<MapData>>(t: &mut Trie<T>, want: &RuleSet) -> Result<Diff> {
    let have = read_rules(t)?;
    let mut d = Diff::default();
    for (k, r) in want {
        match have.get(k) {
            Some(old) if old == r => continue,
            Some(_) => d.changed += 1,
            None => d.added += 1,
        }
        t.insert(&trie_key(k), *r, 0)
            .with_context(|| format!("writing pattern {} to the PATTERNS map", key_name(k)))?;
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        t.remove(&trie_key(k))
            .with_context(|| format!("removing pattern {} from the PATTERNS map", key_name(k)))?;
        d.removed += 1;
    }
    Ok(d)
}

fn tld_key(label: &str) -> Result<TldKey> {
    TldKey::new(label.as_bytes())
        .ok_or_else(|| anyhow!("TLD label '{label}' is empty or over 63 bytes"))
}

/// Adds the labels of `want` the TLD set lacks; returns how many.
pub fn add_tlds<T: BorrowMut<MapData>>(m: &mut Tlds<T>, want: &BTreeSet<String>) -> Result<usize> {
    let mut added = 0;
    for label in want {
        let k = tld_key(label)?;
        if m.get(&k, 0).is_err() {
            m.insert(k, 1, 0)
                .with_context(|| format!("writing '{label}' to the TLDS map"))?;
            added += 1;
        }
    }
    Ok(added)
}

/// Removes the labels not in `want`; returns how many.
pub fn remove_other_tlds<T: BorrowMut<MapData>>(
    m: &mut Tlds<T>,
    want: &BTreeSet<String>,
) -> Result<usize> {
    let keep: HashSet<TldKey> = want.iter().map(|l| tld_key(l)).collect::<Result<_>>()?;
    let mut gone = vec![];
    for k in m.keys() {
        let k = k.context("reading the TLDS map")?;
        if !keep.contains(&k) {
            gone.push(k);
        }
    }
    for k in &gone {
        m.remove(k).context("removing a label from the TLDS map")?;
    }
    Ok(gone.len())
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

    pub fn trie(&self) -> Result<Trie<MapData>> {
        Ok(LpmTrie::try_from(self.map(MAP_PATTERNS)?)?)
    }

    pub fn tlds(&self) -> Result<Tlds<MapData>> {
        Ok(HashMap::try_from(self.map(MAP_TLDS)?)?)
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let a: PerCpuArray<MapData, Counters> = PerCpuArray::try_from(self.map(MAP_COUNTERS)?)?;
        let v = a.get(&0, 0).context("reading the COUNTERS map")?;
        Ok(Counters::sum(v.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

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
        let k = trie_key(rules.keys().next().unwrap());
        assert_eq!(
            k.prefix_len() as usize,
            rules.keys().next().unwrap().len() * 8
        );
    }
}

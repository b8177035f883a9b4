//! Auto mode's label sets (`TLDS`, `NAMESPACES`) as the agent writes them:
//! bucket arrays laid out as `dnsfast_common::labels` describes. Generic
//! over where the buckets live, so the logic is unit-tested in memory and
//! runs on the loaded maps and on their pins alike.

use std::{borrow::BorrowMut, collections::BTreeSet};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, MapData};
use dnsfast_common::{
    labels::{label_buckets, label_fp, LabelBucket, LABEL_SLOTS},
    TldKey,
};

use super::cuckoo::{self, Place};

/// Where a set's buckets live.
pub(crate) trait Buckets {
    /// Bucket count minus one.
    fn mask(&self) -> u32;
    fn bucket(&self, i: u32) -> Result<LabelBucket>;
    fn set_bucket(&mut self, i: u32, b: &LabelBucket) -> Result<()>;
}

impl<T: std::borrow::BorrowMut<MapData>> Buckets for Array<T, LabelBucket> {
    fn mask(&self) -> u32 {
        self.len().saturating_sub(1)
    }
    fn bucket(&self, i: u32) -> Result<LabelBucket> {
        self.get(&i, 0)
            .with_context(|| format!("reading bucket {i} of a label set"))
    }
    fn set_bucket(&mut self, i: u32, b: &LabelBucket) -> Result<()> {
        self.set(i, b, 0)
            .with_context(|| format!("writing bucket {i} of a label set"))
    }
}

/// A label set.
pub(crate) struct LabelTable<B>(pub B);

impl cuckoo::Slots for LabelBucket {
    const SLOTS: usize = LABEL_SLOTS;
    fn is_free(&self, slot: usize) -> bool {
        self.fp[slot] == 0
    }
    fn fp(&self, slot: usize) -> u64 {
        self.fp[slot]
    }
    fn copy_slot(&mut self, to: usize, src: &Self, from: usize) {
        self.fp[to] = src.fp[from];
        self.label[to] = src.label[from];
    }
}

impl<B: Buckets> cuckoo::Store<LabelBucket> for LabelTable<B> {
    fn read(&self, i: u32) -> Result<LabelBucket> {
        self.0.bucket(i)
    }
    fn write(&mut self, i: u32, b: &LabelBucket) -> Result<()> {
        self.0.set_bucket(i, b)
    }
}

fn key_of(label: &str) -> Result<TldKey> {
    TldKey::new(label.as_bytes())
        .ok_or_else(|| anyhow!("label '{label}' is empty or over 63 bytes"))
}

impl<B: Buckets> LabelTable<B> {
    /// Where `k`, of fingerprint `fp`, is stored.
    fn find(&self, k: &TldKey, fp: u64) -> Result<Option<Place>> {
        let (b1, b2) = label_buckets(fp, self.0.mask());
        for b in [b1, b2] {
            let bucket = self.0.bucket(b)?;
            for slot in 0..LABEL_SLOTS {
                if bucket.fp[slot] == fp && bucket.label[slot] == *k {
                    return Ok(Some(Place { bucket: b, slot }));
                }
            }
        }
        Ok(None)
    }

    pub(crate) fn contains(&self, label: &str) -> Result<bool> {
        let k = key_of(label)?;
        Ok(self.find(&k, label_fp(&k))?.is_some())
    }

    /// Adds `label`; false if it was there.
    pub(crate) fn insert(&mut self, label: &str) -> Result<bool> {
        let k = key_of(label)?;
        let fp = label_fp(&k);
        if self.find(&k, fp)?.is_some() {
            return Ok(false);
        }
        let mask = self.0.mask();
        let mut entry = LabelBucket::EMPTY;
        entry.fp[0] = fp;
        entry.label[0] = k;
        let other = |fp, b| {
            let (x, y) = label_buckets(fp, mask);
            if x == b {
                y
            } else {
                x
            }
        };
        if !cuckoo::place(self, &entry, label_buckets(fp, mask), other)? {
            bail!(
                "label set full around '{label}' ({} buckets of {LABEL_SLOTS})",
                mask as u64 + 1
            );
        }
        Ok(true)
    }

    /// Removes `label`; false if it was not there.
    pub(crate) fn remove(&mut self, label: &str) -> Result<bool> {
        let k = key_of(label)?;
        let Some(at) = self.find(&k, label_fp(&k))? else {
            return Ok(false);
        };
        let mut b = self.0.bucket(at.bucket)?;
        b.fp[at.slot] = 0;
        b.label[at.slot] = LabelBucket::EMPTY.label[0];
        self.0.set_bucket(at.bucket, &b)?;
        Ok(true)
    }

    /// Every label in the set.
    pub(crate) fn labels(&self) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for b in 0..=self.0.mask() {
            let bucket = self.0.bucket(b)?;
            for slot in 0..LABEL_SLOTS {
                if bucket.fp[slot] != 0 {
                    let l = &bucket.label[slot].label;
                    let n = (l[0] as usize).min(63);
                    out.insert(String::from_utf8_lossy(&l[1..1 + n]).into_owned());
                }
            }
        }
        Ok(out)
    }
}

/// A set of labels (`TLDS`, `NAMESPACES`): buckets of label keys.
pub(crate) type LabelSet<T> = LabelTable<Array<T, LabelBucket>>;

/// Adds the labels of `want` the set lacks; returns how many.
pub(crate) fn add_labels<T: BorrowMut<MapData>>(
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
pub(crate) fn remove_other_labels<T: BorrowMut<MapData>>(
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

#[cfg(test)]
impl Buckets for Vec<LabelBucket> {
    fn mask(&self) -> u32 {
        self.len() as u32 - 1
    }
    fn bucket(&self, i: u32) -> Result<LabelBucket> {
        Ok(self[i as usize])
    }
    fn set_bucket(&mut self, i: u32, b: &LabelBucket) -> Result<()> {
        self[i as usize] = *b;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_remove() {
        let mut t = LabelTable(vec![LabelBucket::EMPTY; 8]);
        assert!(t.insert("com").unwrap());
        assert!(!t.insert("COM").unwrap(), "labels are case-insensitive");
        assert!(t.contains("Com").unwrap());
        assert!(!t.contains("co").unwrap());
        assert!(t.remove("com").unwrap());
        assert!(!t.remove("com").unwrap());
        assert!(!t.contains("com").unwrap());
        assert!(t.insert(&"x".repeat(63)).is_ok());
        assert!(t.insert(&"x".repeat(64)).is_err());
        assert!(t.insert("").is_err());
    }

    #[test]
    fn a_nearly_full_set_moves_labels_and_keeps_them_all() {
        // 64 buckets of 4: fill 90 % of the slots.
        let mut t = LabelTable(vec![LabelBucket::EMPTY; 64]);
        let labels: Vec<String> = (0..230).map(|i| format!("ns{i}")).collect();
        for l in &labels {
            assert!(t.insert(l).unwrap());
        }
        for l in &labels {
            assert!(t.contains(l).unwrap(), "{l}");
        }
        assert_eq!(t.labels().unwrap().len(), labels.len());
        // Past what the buckets hold: a clear error, not a lost label.
        let mut t = LabelTable(vec![LabelBucket::EMPTY; 2]);
        let err = (0..9).find_map(|i| t.insert(&format!("l{i}")).err());
        assert!(err.unwrap().to_string().contains("label set full"));
    }
}

//! Cuckoo placement, shared by the kernel's bucket tables (the label sets
//! and the pattern table). An entry lives in one of the two buckets its
//! fingerprint picks; when both are full, entries move to their other
//! bucket to make room. Each move writes the entry's new place before its
//! old one is overwritten, so the XDP program, reading while an insert
//! runs, finds every entry in one of its two buckets throughout.

use std::collections::{HashMap, VecDeque};

use anyhow::Result;

/// Moves tried before an insert gives up. With at most half the slots in
/// use, one is rarely needed.
const MAX_PATH: usize = 5;

/// A slot's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) bucket: u32,
    pub(crate) slot: usize,
}

/// A bucket, as placement sees it.
pub(crate) trait Slots: Copy {
    const SLOTS: usize;
    fn is_free(&self, slot: usize) -> bool;
    fn fp(&self, slot: usize) -> u64;
    /// Copies slot `from` of `src` into slot `to` of `self`.
    fn copy_slot(&mut self, to: usize, src: &Self, from: usize);
}

/// Where the buckets live.
pub(crate) trait Store<B> {
    fn read(&self, i: u32) -> Result<B>;
    fn write(&mut self, i: u32, b: &B) -> Result<()>;
}

/// Puts slot 0 of `entry`, whose fingerprint picks the buckets `first`,
/// into a free slot, moving other entries to their other bucket when both
/// are full; `other(fp, b)` is the bucket an entry of fingerprint `fp` has
/// besides `b`. False when no path of up to `MAX_PATH` moves frees a slot
/// (nothing is written then).
pub(crate) fn place<B: Slots, S: Store<B>>(
    store: &mut S,
    entry: &B,
    first: (u32, u32),
    other: impl Fn(u64, u32) -> u32,
) -> Result<bool> {
    let mut seen: HashMap<u32, B> = HashMap::new();
    // Breadth first over displacement paths, each ending in a bucket to
    // look for a free slot in.
    let mut queue: VecDeque<(Vec<Place>, u32)> =
        VecDeque::from([(vec![], first.0), (vec![], first.1)]);
    while let Some((path, b)) = queue.pop_front() {
        let bucket = match seen.get(&b) {
            Some(x) => *x,
            None => {
                let x = store.read(b)?;
                seen.insert(b, x);
                x
            }
        };
        if let Some(slot) = (0..B::SLOTS).find(|&s| bucket.is_free(s)) {
            shift(store, entry, &path, Place { bucket: b, slot })?;
            return Ok(true);
        }
        if path.len() >= MAX_PATH {
            continue;
        }
        for slot in 0..B::SLOTS {
            let here = Place { bucket: b, slot };
            if path.contains(&here) {
                continue;
            }
            let mut p = path.clone();
            p.push(here);
            queue.push_back((p, other(bucket.fp(slot), b)));
        }
    }
    Ok(false)
}

/// Moves each entry on `path` one step (the last into `free`), then writes
/// `entry`'s slot 0 where the first was.
fn shift<B: Slots, S: Store<B>>(
    store: &mut S,
    entry: &B,
    path: &[Place],
    free: Place,
) -> Result<()> {
    let mut to = free;
    for from in path.iter().rev() {
        let src = store.read(from.bucket)?;
        let mut dst = store.read(to.bucket)?;
        dst.copy_slot(to.slot, &src, from.slot);
        store.write(to.bucket, &dst)?;
        to = *from;
    }
    let mut dst = store.read(to.bucket)?;
    dst.copy_slot(to.slot, entry, 0);
    store.write(to.bucket, &dst)
}

//! Longest-suffix lookup in user space, on the same label-reversed key the
//! kernel's pattern table uses. The forwarder decides block/allow and picks a
//! zone with it, so a TCP query or a host without XDP gets the very verdict
//! the XDP program would give.

use std::collections::HashMap;

use crate::abi::Scratch;
use crate::name::{encode_slice, NameError, KEY_END};

/// Runs the shared encoder on a wire name in memory, in this thread's
/// scratch buffer (2 KiB, one per thread rather than one per call), and
/// hands `f` the buffer and the key's length: the key sits at
/// `buf[KEY_END - len..KEY_END]`. Every user-space encoding goes through
/// here.
pub fn with_encoded<R>(
    wire: &[u8],
    f: impl FnOnce(&mut Scratch, usize) -> R,
) -> Result<R, NameError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Box<Scratch>> =
            std::cell::RefCell::new(Box::new(Scratch::zeroed()));
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let (len, _) = encode_slice(&mut s, wire)?;
        Ok(f(&mut s, len))
    })
}

/// The label-reversed, lower-cased key of a wire name (no root byte), and
/// the name's length in wire form (root byte included).
pub fn name_key(wire: &[u8]) -> Result<(Vec<u8>, usize), NameError> {
    with_encoded(wire, |s, len| {
        (s.buf[KEY_END - len..KEY_END].to_vec(), len + 1)
    })
}

/// Values keyed by name suffix. `longest` returns the value of the longest
/// suffix of a name, at label boundaries; the empty key (the root, `.`)
/// matches every name.
#[derive(Clone, Debug)]
pub struct SuffixMap<V> {
    map: HashMap<Box<[u8]>, V>,
}

impl<V> Default for SuffixMap<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
        }
    }
}

impl<V> SuffixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `key` as made by [`name_key`] or `Pattern::key`.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        self.map.insert(key.into(), value)
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        self.map.remove(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The longest stored suffix of the name whose key is `key`, with the
    /// length of that suffix's key.
    pub fn longest(&self, key: &[u8]) -> Option<(&V, usize)> {
        if self.map.is_empty() {
            return None;
        }
        let (ends, n) = label_ends(key);
        (0..=n).rev().find_map(|j| {
            let end = ends[j] as usize;
            self.map.get(&key[..end]).map(|v| (v, end))
        })
    }
}

/// Where the suffixes of the name whose key is `key` end in it, at label
/// boundaries, shortest first: `ends[1..=n]`, one per label, and
/// `ends[0] = 0`, the root. On the stack: the forwarder asks this per query.
pub fn label_ends(key: &[u8]) -> ([u8; 128], usize) {
    let mut ends = [0u8; 128];
    let mut n = 0;
    let mut i = 0usize;
    while i < key.len() && n < ends.len() - 1 {
        i += 1 + key[i] as usize;
        n += 1;
        ends[n] = i.min(key.len()) as u8;
    }
    (ends, n)
}

/// The decision for a name (its key as made by [`name_key`]): the longest
/// matching rule and its key length. A search suffix turns into `Block`
/// when at least two labels stand before it and the last of them is in
/// `tlds` (lower-cased labels), and into no decision otherwise; the same
/// semantics as the XDP program.
pub fn decide(
    rules: &SuffixMap<crate::pattern::Action>,
    tlds: &std::collections::HashSet<Vec<u8>>,
    key: &[u8],
) -> Option<(crate::pattern::Action, usize)> {
    decide_in(&[rules], tlds, key)
}

/// [`decide`] over several maps that stand for one table: the longest
/// match of any decides, the earlier map at equal length (the forwarder's
/// config rules before the Kubernetes API's, as in the kernel table).
pub fn decide_in(
    maps: &[&SuffixMap<crate::pattern::Action>],
    tlds: &std::collections::HashSet<Vec<u8>>,
    key: &[u8],
) -> Option<(crate::pattern::Action, usize)> {
    use crate::pattern::Action;
    let (action, at) = maps.iter().filter_map(|m| m.longest(key)).fold(
        None,
        |best: Option<(&Action, usize)>, (a, at)| match best {
            Some((_, b)) if b >= at => best,
            _ => Some((a, at)),
        },
    )?;
    match action {
        Action::Suffix => {
            let n = *key.get(at)? as usize;
            let label = key.get(at + 1..at + 1 + n)?;
            // Two labels at least before the suffix: one is a service name.
            let qualified = key.len() > at + 1 + n;
            (qualified && tlds.contains(label)).then_some((Action::Block, at))
        }
        Action::Exists | Action::ExistsWild => {
            // The name itself exists; below it, nothing (or a wildcard).
            let n = *key.get(at)? as usize;
            let label = key.get(at + 1..at + 1 + n)?;
            let wild = *action == Action::ExistsWild && crate::abi::is_wildcard(label);
            (!wild).then_some((Action::Block, at))
        }
        a => Some((*a, at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{to_wire, Action, Pattern, ReferenceMatcher};

    fn key(name: &str) -> Vec<u8> {
        name_key(&to_wire(name)).unwrap().0
    }

    #[test]
    fn name_key_is_the_pattern_key() {
        let p = Pattern::parse("Api.GitHub.com").unwrap();
        let (data, len) = p.key();
        assert_eq!(key("api.github.COM"), &data[..len]);
        assert_eq!(name_key(b"\x03com\x00").unwrap().1, 5);
        assert_eq!(name_key(b"\x00").unwrap(), (vec![], 1));
        assert!(name_key(b"\xc0\x0c").is_err());
    }

    #[test]
    fn longest_suffix_at_label_boundaries() {
        let mut m = SuffixMap::new();
        m.insert(&key("cluster.local"), "cd");
        m.insert(&key("svc.cluster.local"), "svc");
        m.insert(&[], "root");
        let l = |n: &str| m.longest(&key(n)).map(|(v, _)| *v);
        assert_eq!(l("a.svc.cluster.local"), Some("svc"));
        assert_eq!(l("svc.cluster.local"), Some("svc"));
        assert_eq!(l("xsvc.cluster.local"), Some("cd"));
        assert_eq!(l("CLUSTER.local"), Some("cd"));
        assert_eq!(l("example.com"), Some("root"));
        m.remove(&[]);
        assert_eq!(m.longest(&key("example.com")), None);
    }

    #[test]
    fn decide_blocks_artifacts_only() {
        let mut m = SuffixMap::new();
        m.insert(&key("svc.cluster.local"), Action::Suffix);
        m.insert(&key("dev.svc.cluster.local"), Action::Suffix);
        m.insert(&key("ok.com.svc.cluster.local"), Action::Allow);
        let tlds: std::collections::HashSet<Vec<u8>> =
            [b"com".to_vec(), b"dev".to_vec()].into_iter().collect();
        let d = |n: &str| decide(&m, &tlds, &key(n)).map(|(a, _)| a);
        assert_eq!(d("api.github.COM.svc.cluster.local"), Some(Action::Block));
        assert_eq!(d("web.dev.svc.cluster.local"), None);
        assert_eq!(d("svc.cluster.local"), None);
        assert_eq!(d("com.svc.cluster.local"), None, "a service named com");
        assert_eq!(d("a.ok.com.svc.cluster.local"), Some(Action::Allow));
    }

    /// The production matcher against the plain reference, on random names.
    #[test]
    fn exists_passes_the_name_and_wildcards_and_blocks_the_rest_below() {
        let rules = [
            ("cluster.local", Action::Exists),
            ("svc.cluster.local", Action::ExistsWild),
            ("pod.cluster.local", Action::Allow),
            ("default.svc.cluster.local", Action::ExistsWild),
            ("web.default.svc.cluster.local", Action::Allow),
        ];
        let mut m = SuffixMap::new();
        let mut r = ReferenceMatcher::new();
        for (n, a) in rules {
            m.insert(&key(n), a);
            r.insert(&Pattern::parse(n).unwrap(), a);
        }
        let tlds = std::collections::HashSet::new();
        for (name, blocked) in [
            ("cluster.local", false),
            ("svc.cluster.local", false),
            ("default.svc.cluster.local", false),
            ("Default.SVC.cluster.local", false),
            ("web.default.svc.cluster.local", false),
            ("store-0.web.default.svc.cluster.local", false),
            ("_http._tcp.web.default.svc.cluster.local", false),
            ("1-2-3-4.default.pod.cluster.local", false),
            ("*.default.svc.cluster.local", false),
            ("any.svc.cluster.local", false),
            ("x.any.svc.cluster.local", false),
            ("wiki.default.svc.cluster.local", true),
            ("api.github.com.default.svc.cluster.local", true),
            ("web.prod.svc.cluster.local", true),
            ("wiki.svc.cluster.local", true),
            ("wiki.cluster.local", true),
            ("anyx.default.svc.cluster.local", true),
            ("*.cluster.local", true),
            ("example.com", false),
        ] {
            let d = decide(&m, &tlds, &key(name)).map(|(a, _)| a);
            assert_eq!(d == Some(Action::Block), blocked, "{name}: {d:?}");
            let rd = r.decide_wire(&to_wire(name)).map(|(a, _)| a);
            assert_eq!(
                rd == Some(Action::Block),
                blocked,
                "reference, {name}: {rd:?}"
            );
        }
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let labels = ["a", "B", "com", "svc", "cluster", "local", "x-y", "COM"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut gen = |max: usize| {
            let k = 1 + next(max);
            (0..k)
                .map(|_| labels[next(labels.len())])
                .collect::<Vec<_>>()
                .join(".")
        };
        let mut reference = ReferenceMatcher::new();
        let mut ours = SuffixMap::new();
        for i in 0..200 {
            let p = Pattern::parse(&gen(4)).unwrap();
            let a = match i % 4 {
                0 => Action::Allow,
                1 => Action::Suffix,
                _ => Action::Block,
            };
            reference.insert(&p, a);
            let (d, l) = p.key();
            ours.insert(&d[..l], a);
        }
        let mut tlds = std::collections::HashSet::new();
        for t in ["com", "local"] {
            reference.insert_tld(t);
            tlds.insert(t.as_bytes().to_vec());
        }
        for _ in 0..20_000 {
            let n = gen(7);
            let want = reference.decide_wire(&to_wire(&n)).map(|x| x.0);
            let got = decide(&ours, &tlds, &key(&n)).map(|(a, _)| a);
            assert_eq!(got, want, "{n}");
        }
    }
}

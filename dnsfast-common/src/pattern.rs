//! Text patterns (`com.svc.cluster.local`) to pattern table keys, and a
//! reference matcher that implements the semantics plainly, for tests.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::abi::{
    is_wildcard, Rule, ACTION_ALLOW, ACTION_BLOCK, ACTION_EXISTS, ACTION_EXISTS_WILD,
    ACTION_SUFFIX, KEY_DATA_LEN, MAX_LABEL, MAX_NAME_WIRE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Block,
    Allow,
    /// A search suffix (derived, not written by hand): a name below it is
    /// blocked when the label just before the suffix is in the TLD set.
    Suffix,
    /// A name that exists (from the Kubernetes API): it passes, and a name
    /// below it no longer rule covers is blocked.
    Exists,
    /// As `Exists`, but a name whose label just below it is a wildcard
    /// (`*`, `any`) passes too.
    ExistsWild,
}

impl Action {
    pub fn code(self) -> u32 {
        match self {
            Action::Block => ACTION_BLOCK,
            Action::Allow => ACTION_ALLOW,
            Action::Suffix => ACTION_SUFFIX,
            Action::Exists => ACTION_EXISTS,
            Action::ExistsWild => ACTION_EXISTS_WILD,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            ACTION_BLOCK => Some(Action::Block),
            ACTION_ALLOW => Some(Action::Allow),
            ACTION_SUFFIX => Some(Action::Suffix),
            ACTION_EXISTS => Some(Action::Exists),
            ACTION_EXISTS_WILD => Some(Action::ExistsWild),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Block => "block",
            Action::Allow => "allow",
            Action::Suffix => "suffix",
            Action::Exists => "exists",
            Action::ExistsWild => "exists-wild",
        })
    }
}

/// Why a pattern was refused. Each message names the offending part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatternError {
    Empty,
    EmptyLabel,
    LabelTooLong { label: String, len: usize },
    NameTooLong { wire_len: usize },
    BadChar { ch: char, label: String },
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Empty => write!(f, "empty pattern"),
            PatternError::EmptyLabel => write!(f, "empty label (two dots in a row, or a leading dot)"),
            PatternError::LabelTooLong { label, len } => {
                write!(f, "label '{label}' is {len} bytes; the limit is {MAX_LABEL}")
            }
            PatternError::NameTooLong { wire_len } => write!(
                f,
                "name is {wire_len} bytes in wire form; the limit is {MAX_NAME_WIRE}"
            ),
            PatternError::BadChar { ch, label } => write!(
                f,
                "character {ch:?} in label '{label}' is not allowed (letters, digits, '-' and '_' only)"
            ),
        }
    }
}

impl std::error::Error for PatternError {}

/// A validated, lower-cased pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    /// Canonical text: lower case, no trailing dot.
    pub name: String,
}

impl Pattern {
    /// Parses `example.com` or `example.com.`; case is folded.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let t = text.trim();
        let t = t.strip_suffix('.').unwrap_or(t);
        if t.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut wire_len = 1;
        for label in t.split('.') {
            if label.is_empty() {
                return Err(PatternError::EmptyLabel);
            }
            if label.len() > MAX_LABEL {
                return Err(PatternError::LabelTooLong {
                    label: label.to_string(),
                    len: label.len(),
                });
            }
            if let Some(ch) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(PatternError::BadChar {
                    ch,
                    label: label.to_string(),
                });
            }
            wire_len += label.len() + 1;
        }
        if wire_len > MAX_NAME_WIRE {
            return Err(PatternError::NameTooLong { wire_len });
        }
        Ok(Pattern {
            name: t.to_ascii_lowercase(),
        })
    }

    /// Wire form, root byte included.
    pub fn wire(&self) -> Vec<u8> {
        to_wire(&self.name)
    }

    /// The label-reversed key bytes and their length.
    pub fn key(&self) -> ([u8; KEY_DATA_LEN], usize) {
        let wire = self.wire();
        let (rev, _) = crate::suffix::name_key(&wire).expect("a validated pattern always encodes");
        let mut data = [0u8; KEY_DATA_LEN];
        data[..rev.len()].copy_from_slice(&rev);
        (data, rev.len())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Dotted text to wire form without validation (labels are cut at 255 bytes
/// only by the caller's checks). Used for patterns and test names.
pub fn to_wire(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// The labels of a label-reversed key, in key order (the name's last label
/// first); lossy on bytes that are not UTF-8 or run short.
pub fn key_labels(key: &[u8]) -> Vec<String> {
    let (ends, n) = crate::suffix::label_ends(key);
    ends[..=n]
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0] as usize, w[1] as usize);
            String::from_utf8_lossy(&key[(start + 1).min(end)..end]).into_owned()
        })
        .collect()
}

/// The dotted name a table key stands for (`\x03com\x07example` →
/// `example.com`), so the pinned table can be listed and explained.
pub fn key_name(key: &[u8]) -> String {
    let mut l = key_labels(key);
    l.reverse();
    l.join(".")
}

/// The matching semantics written plainly, with no table and no reversed
/// encoding: walk the name's suffixes at label boundaries, longest first, and
/// return the first pattern found. Tests compare the kernel against it.
#[derive(Default, Clone, Debug)]
pub struct ReferenceMatcher {
    /// Keyed by the pattern's labels, so a label that contains a `.` byte can
    /// never pass for two labels.
    rules: HashMap<Vec<Vec<u8>>, (Action, String)>,
    /// Lower-cased labels that make what stands before a search suffix look
    /// fully qualified.
    tlds: HashSet<Vec<u8>>,
}

impl ReferenceMatcher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, p: &Pattern, action: Action) {
        self.rules
            .insert(labels_of(&p.name), (action, p.name.clone()));
    }

    pub fn remove(&mut self, p: &Pattern) {
        self.rules.remove(&labels_of(&p.name));
    }

    pub fn insert_tld(&mut self, label: &str) {
        self.tlds.insert(label.as_bytes().to_ascii_lowercase());
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decision for a wire name: `None` when no pattern matches or the name
    /// is not a plain, uncompressed, valid name. The longest matching rule
    /// decides; a search suffix blocks (and is named) only when at least two
    /// labels stand before it and the last of them is a TLD, and otherwise
    /// decides "no match".
    pub fn decide_wire(&self, wire: &[u8]) -> Option<(Action, String)> {
        let labels = split_wire(wire)?;
        let (start, (action, name)) = (0..labels.len())
            .find_map(|start| self.rules.get(&labels[start..]).map(|r| (start, r)))?;
        match action {
            Action::Suffix => {
                // At least two labels before the suffix, the last a TLD.
                let before = &labels[..start];
                (before.len() >= 2 && self.tlds.contains(before.last()?))
                    .then(|| (Action::Block, name.clone()))
            }
            Action::Exists | Action::ExistsWild => {
                // The name itself exists; below it, nothing (or a wildcard).
                let below = labels[..start].last()?;
                let wild = *action == Action::ExistsWild && is_wildcard(below);
                (!wild).then(|| (Action::Block, name.clone()))
            }
            a => Some((*a, name.clone())),
        }
    }
}

fn labels_of(name: &str) -> Vec<Vec<u8>> {
    name.split('.')
        .map(|l| l.as_bytes().to_ascii_lowercase())
        .collect()
}

/// Lower-cased labels of a wire name, or `None` when it is not valid.
fn split_wire(wire: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut labels = Vec::new();
    let mut i = 0;
    loop {
        let n = *wire.get(i)? as usize;
        if n == 0 {
            break;
        }
        if n > MAX_LABEL {
            return None;
        }
        let label = wire.get(i + 1..i + 1 + n)?;
        labels.push(label.to_ascii_lowercase());
        i += 1 + n;
        if i + 1 > MAX_NAME_WIRE {
            return None;
        }
    }
    Some(labels)
}

/// The table entry for `p`: its key bytes and the rule stored under them
/// (one encoding of the name for both).
pub fn rule_entry(p: &Pattern, action: Action) -> (Vec<u8>, Rule) {
    let (data, len) = p.key();
    let rule = Rule {
        action: action.code(),
        key_len: len as u32,
    };
    (data[..len].to_vec(), rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rules: &[(&str, Action)]) -> ReferenceMatcher {
        let mut r = ReferenceMatcher::new();
        for (p, a) in rules {
            r.insert(&Pattern::parse(p).unwrap(), *a);
        }
        r
    }

    #[test]
    fn keys_name_their_pattern() {
        for n in ["com", "example.com", "com.svc.cluster.local", "a-b_c.x9"] {
            let p = Pattern::parse(n).unwrap();
            let (data, len) = p.key();
            assert_eq!(key_name(&data[..len]), n);
        }
        assert_eq!(key_labels(&[3, b'c', b'o', b'm', 1, b'x']), ["com", "x"]);
    }

    #[test]
    fn parse_canonicalises() {
        assert_eq!(
            Pattern::parse("Com.SVC.cluster.local.").unwrap().name,
            "com.svc.cluster.local"
        );
        assert_eq!(Pattern::parse(" a_b-c.d ").unwrap().name, "a_b-c.d");
    }

    #[test]
    fn parse_errors_name_the_cause() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("."), Err(PatternError::Empty));
        assert_eq!(Pattern::parse("a..b"), Err(PatternError::EmptyLabel));
        assert_eq!(Pattern::parse(".a"), Err(PatternError::EmptyLabel));
        let long = "x".repeat(64);
        assert!(matches!(
            Pattern::parse(&long),
            Err(PatternError::LabelTooLong { len: 64, .. })
        ));
        assert!(matches!(
            Pattern::parse("a b.c"),
            Err(PatternError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Pattern::parse("a/b"),
            Err(PatternError::BadChar { ch: '/', .. })
        ));
        let name = vec!["y".repeat(63); 4].join(".");
        assert!(matches!(
            Pattern::parse(&name),
            Err(PatternError::NameTooLong { wire_len: 257 })
        ));
        let ok = [
            &"y".repeat(63)[..],
            &"y".repeat(63),
            &"y".repeat(63),
            &"y".repeat(61),
        ]
        .join(".");
        assert!(Pattern::parse(&ok).is_ok());
        assert!(PatternError::LabelTooLong {
            label: "ab".into(),
            len: 64
        }
        .to_string()
        .contains("63"));
    }

    #[test]
    fn key_is_label_reversed() {
        let (data, len) = Pattern::parse("www.Example.COM").unwrap().key();
        assert_eq!(&data[..len], b"\x03com\x07example\x03www");
    }

    #[test]
    fn suffix_at_label_boundary_only() {
        let r = m(&[("com.svc.cluster.local", Action::Block)]);
        let d = |n: &str| r.decide_wire(&to_wire(n)).map(|x| x.0);
        assert_eq!(d("espn.com.svc.cluster.local"), Some(Action::Block));
        assert_eq!(d("com.svc.cluster.local"), Some(Action::Block));
        assert_eq!(d("ESPN.Com.Svc.Cluster.Local"), Some(Action::Block));
        assert_eq!(d("xcom.svc.cluster.local"), None);
        assert_eq!(d("svc.cluster.local"), None);
        assert_eq!(d("com.svc.cluster.local.evil"), None);
    }

    #[test]
    fn longest_pattern_decides() {
        let r = m(&[
            ("cluster.local", Action::Block),
            ("svc.cluster.local", Action::Allow),
            ("bad.svc.cluster.local", Action::Block),
        ]);
        let d = |n: &str| r.decide_wire(&to_wire(n));
        assert_eq!(
            d("x.cluster.local").unwrap(),
            (Action::Block, "cluster.local".into())
        );
        assert_eq!(d("web.svc.cluster.local").unwrap().0, Action::Allow);
        assert_eq!(
            d("a.bad.svc.cluster.local").unwrap(),
            (Action::Block, "bad.svc.cluster.local".into())
        );
    }

    #[test]
    fn search_suffixes_block_only_fully_qualified_looking_names() {
        let mut r = m(&[
            ("svc.cluster.local", Action::Suffix),
            ("dev.svc.cluster.local", Action::Suffix),
            ("cluster.local", Action::Suffix),
            ("us-west-2.compute.internal", Action::Suffix),
            ("ok.com.svc.cluster.local", Action::Allow),
        ]);
        for t in ["com", "dev", "local", "internal"] {
            r.insert_tld(t);
        }
        let d = |n: &str| r.decide_wire(&to_wire(n));
        assert_eq!(
            d("api.github.COM.svc.cluster.local"),
            Some((Action::Block, "svc.cluster.local".into()))
        );
        // A service in namespace `dev` is a real name: the longest suffix
        // is `dev.svc.cluster.local`, and `web` is no TLD.
        assert_eq!(d("web.dev.svc.cluster.local"), None);
        assert_eq!(
            d("kubedns.kube-system.svc.cluster.local.us-west-2.compute.internal"),
            Some((Action::Block, "us-west-2.compute.internal".into()))
        );
        assert_eq!(d("svc.cluster.local"), None, "the suffix itself");
        assert_eq!(
            d("app.svc.cluster.local"),
            None,
            "one label: a service name"
        );
        assert_eq!(d("a.ok.com.svc.cluster.local").unwrap().0, Action::Allow);
        assert_eq!(d("web.default.svc.cluster.local"), None);
    }

    #[test]
    fn a_dot_inside_a_label_is_not_a_boundary() {
        let r = m(&[("cluster.local", Action::Block)]);
        assert_eq!(r.decide_wire(b"\x0dcluster.local\x00"), None);
    }

    #[test]
    fn invalid_wire_never_matches() {
        let r = m(&[("com", Action::Block)]);
        assert_eq!(r.decide_wire(b"\x03com"), None);
        assert_eq!(r.decide_wire(b"\xc0\x0c"), None);
        assert_eq!(
            r.decide_wire(b"\x03com\x00").map(|x| x.0),
            Some(Action::Block)
        );
    }
}

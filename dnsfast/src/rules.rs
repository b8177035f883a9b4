//! The rule set: what the config's patterns and auto mode's search
//! suffixes mean as table entries (label-reversed key → rule), in one
//! pure form that the dataplane writes to the kernel and the forwarder
//! matches against. No aya here: the forwarder depends on this module,
//! never on the kernel maps.

use std::collections::{BTreeMap, BTreeSet};

use dnsfast_common::{
    pattern::{rule_entry, Action},
    suffix::{label_ends, SuffixMap},
    Rule, ACTION_SUFFIX, ACTION_SUFFIX_NS,
};

use crate::config::PatternTable;

/// Pattern table contents: label-reversed key bytes → rule.
pub type RuleSet = BTreeMap<Vec<u8>, Rule>;

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
pub(crate) fn fold_namespaces(rules: &RuleSet) -> (RuleSet, BTreeSet<String>) {
    let is_suffix = |r: &Rule| r.action == ACTION_SUFFIX;
    // parent key -> labels of its one-label-longer suffix children
    let mut children: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
    for (k, r) in rules {
        if !is_suffix(r) {
            continue;
        }
        // The last label of the key is the first label of the name.
        let (ends, n) = label_ends(k);
        if n > 0 {
            let parent = &k[..ends[n - 1] as usize];
            let last = parent.len();
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
pub(crate) fn unfold_namespaces(folded: &RuleSet, namespaces: &BTreeSet<String>) -> RuleSet {
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

/// What the Kubernetes API says exists under the cluster domain: the
/// namespaces, and the Services as (namespace, name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterNames {
    pub namespaces: BTreeSet<String>,
    pub services: BTreeSet<(String, String)>,
}

/// The names under the cluster domain `cd` that exist whatever the API
/// says, and what passes them: the zone's apex (`Exists`: a name below it
/// that nothing longer covers is NXDOMAIN), `svc.<cd>` (`ExistsWild`: the
/// same, but a namespace wildcard `*`/`any` passes), and, as
/// `Allow` (never answered in the kernel), `pod.<cd>` (pod records, which
/// depend on CoreDNS's `pods` mode), `dns.<cd>` (`ns.dns.<cd>`, the
/// zone's name server) and `dns-version.<cd>` (CoreDNS's schema TXT).
/// Operator-routed stub zones under `cd` pass whole (`Allow`).
fn cluster_base(cd: &str, stub_zones: &[String]) -> Vec<(String, Action)> {
    let mut out = vec![
        (cd.to_string(), Action::Exists),
        (format!("svc.{cd}"), Action::ExistsWild),
        (format!("pod.{cd}"), Action::Allow),
        (format!("dns.{cd}"), Action::Allow),
        (format!("dns-version.{cd}"), Action::Allow),
    ];
    out.extend(stub_zones.iter().map(|z| (z.clone(), Action::Allow)));
    out
}

/// The entry of namespace `ns`: `<ns>.svc.<cd>` exists, and a name below
/// it that is not one of its Services does not.
pub fn namespace_entry(cd: &str, ns: &str) -> (String, Action) {
    (format!("{ns}.svc.{cd}"), Action::ExistsWild)
}

/// The entry of Service `svc` in `ns`: it and every name below it
/// (endpoints, pod hostnames of a headless Service, `_port._proto` SRV
/// names) pass to the forwarder, always.
pub fn service_entry(cd: &str, ns: &str, svc: &str) -> (String, Action) {
    (format!("{svc}.{ns}.svc.{cd}"), Action::Allow)
}

/// The exact cluster-domain rules for what the API says exists: the base
/// entries, one `Exists` per namespace, one `Allow` per Service. A name
/// that does not make a valid pattern (the API validates them, so this is
/// only a guard) turns its namespace's entry into `Allow`, so that names
/// there pass rather than risk a false NXDOMAIN; such names are returned.
pub fn cluster_rules(
    cd: &str,
    names: &ClusterNames,
    stub_zones: &[String],
) -> (RuleSet, Vec<String>) {
    let mut out = RuleSet::new();
    let mut bad = vec![];
    let mut bad_ns = BTreeSet::new();
    let mut add = |name: String, action: Action, ns: Option<&str>, out: &mut RuleSet| {
        match dnsfast_common::pattern::Pattern::parse(&name) {
            Ok(p) => {
                let (k, r) = rule_entry(&p, action);
                out.insert(k, r);
            }
            Err(_) => {
                if let Some(ns) = ns {
                    bad_ns.insert(ns.to_string());
                }
                bad.push(name);
            }
        }
    };
    for (name, action) in cluster_base(cd, stub_zones) {
        add(name, action, None, &mut out);
    }
    for (ns, svc) in &names.services {
        let (name, action) = service_entry(cd, ns, svc);
        add(name, action, Some(ns), &mut out);
    }
    for ns in &names.namespaces {
        let (name, action) = namespace_entry(cd, ns);
        add(name, action, Some(ns), &mut out);
    }
    for ns in &bad_ns {
        if let Ok(p) = dnsfast_common::pattern::Pattern::parse(&namespace_entry(cd, ns).0) {
            let (k, r) = rule_entry(&p, Action::Allow);
            out.insert(k, r);
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;
    use dnsfast_common::pattern::key_name;

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

    #[test]
    fn cluster_rules_make_namespaces_and_services_exact() {
        let mut names = ClusterNames::default();
        names.namespaces.insert("default".into());
        names.services.insert(("default".into(), "web".into()));
        // Not a DNS name: its namespace passes whole rather than risk it.
        names.namespaces.insert("odd".into());
        names.services.insert(("odd".into(), "bad..name".into()));
        let (rules, bad) = cluster_rules("cluster.local", &names, &["corp.cluster.local".into()]);
        assert_eq!(bad, ["bad..name.odd.svc.cluster.local"]);
        let by_name: BTreeMap<String, Action> = rules
            .iter()
            .map(|(k, r)| (key_name(k), Action::from_code(r.action).unwrap()))
            .collect();
        assert_eq!(by_name["cluster.local"], Action::Exists);
        assert_eq!(by_name["svc.cluster.local"], Action::ExistsWild);
        assert_eq!(by_name["default.svc.cluster.local"], Action::ExistsWild);
        assert_eq!(by_name["web.default.svc.cluster.local"], Action::Allow);
        assert_eq!(by_name["odd.svc.cluster.local"], Action::Allow);
        assert_eq!(by_name["pod.cluster.local"], Action::Allow);
        assert_eq!(by_name["corp.cluster.local"], Action::Allow);
    }
}

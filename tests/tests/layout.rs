//! The layout doc of `src/lib.rs` stays true, and the modules keep to it:
//!
//! - every top-level module the doc names exists, and every one that exists
//!   is named;
//! - a top-level module uses only the modules named after it in the doc
//!   (data flows one way: cli → agent → forward/dataplane → rules →
//!   config → paths);
//! - no import cycles anywhere in the crate, down to single files: a
//!   `mod.rs` that uses a child while that child uses something of the
//!   `mod.rs` is a cycle too. Declaring a child (`mod x;`) is not a use.
//!
//! Uses are read from the source: `crate::…`, `super::…` and `self::…`
//! paths, in `use` items (brace groups expanded) and inline. Each path
//! counts against the deepest module it names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dnsfast/src")
}

/// Every module of the crate, as `a::b` (the root is ""), with its file.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let join = |n: &str| {
                if prefix.is_empty() {
                    n.to_string()
                } else {
                    format!("{prefix}::{n}")
                }
            };
            if p.is_dir() {
                walk(&p, &join(&name), out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let m = match name.as_str() {
                    "mod" => prefix.to_string(),
                    "lib" if prefix.is_empty() => String::new(),
                    "main" if prefix.is_empty() => continue, // the binary
                    _ => join(&name),
                };
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), "", &mut out);
    out
}

/// Source without comments and string literals (they name paths in prose).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    // `x as y` names x; keep the marker through the whitespace strip.
    let tree: String = tree
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" as ", "@as@")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        // Split at top-level commas.
        let mut depth = 0;
        let mut start = 0;
        let bytes = t.as_bytes();
        let mut parts = vec![];
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                b',' if depth == 0 => {
                    parts.push(&t[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&t[start..]);
        for p in parts.into_iter().filter(|p| !p.is_empty()) {
            match p.find('{') {
                Some(i) => {
                    let head = p[..i].trim_end_matches("::");
                    let inner = &p[i + 1..p.len() - 1];
                    go(&join(prefix, head), inner, out);
                }
                None => out.push(join(prefix, p.split("@as@").next().unwrap())),
            }
        }
    }
    fn join(a: &str, b: &str) -> String {
        match (a.is_empty(), b.is_empty()) {
            (true, _) => b.to_string(),
            (_, true) => a.to_string(),
            _ => format!("{a}::{b}"),
        }
    }
    let mut out = vec![];
    go("", &tree, &mut out);
    out
}

/// The paths (`crate::…`, `super::…`, `self::…`) a file's code uses,
/// resolved to absolute module paths (not yet cut to a module).
fn used_paths(module: &str, is_mod_rs: bool, code: &str) -> Vec<Vec<String>> {
    let mut paths = vec![];
    // `use` items, brace groups expanded.
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        paths.extend(expand(&after[..end]));
    }
    // Inline paths.
    for start in ["crate::", "super::", "self::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(start) {
            let i = at + i;
            at = i + start.len();
            if code[..i]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            let p: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // `use x::{…}` heads were read with their groups above.
            if !p
                .trim_end_matches(':')
                .ends_with(start.trim_end_matches(':'))
            {
                paths.push(p);
            }
        }
    }
    let here: Vec<String> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").map(String::from).collect()
    };
    // `super` of a mod.rs is its parent; of x.rs its folder's module.
    let mut out = vec![];
    for p in paths {
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        let (base, rest): (Vec<String>, &[&str]) = match segs.first() {
            Some(&"crate") => (vec![], &segs[1..]),
            Some(&"self") => (here.clone(), &segs[1..]),
            Some(&"super") => {
                let mut b = here.clone();
                let mut r = &segs[..];
                while r.first() == Some(&"super") {
                    b.pop();
                    r = &r[1..];
                }
                // `super` inside `mod tests` of a file is the file itself.
                let _ = is_mod_rs;
                (b, r)
            }
            _ => continue,
        };
        let mut full = base;
        full.extend(rest.iter().map(|s| s.to_string()));
        out.push(full);
    }
    out
}

/// The deepest module `path` names.
fn module_of(path: &[String], mods: &BTreeMap<String, PathBuf>) -> String {
    for n in (0..=path.len()).rev() {
        let m = path[..n].join("::");
        if mods.contains_key(&m) {
            return m;
        }
    }
    String::new()
}

/// module → modules it uses (itself left out).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests may reach anywhere; they are not part of the layout.
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let is_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
        let uses: BTreeSet<String> = used_paths(m, is_mod_rs, &code_of(text))
            .iter()
            .map(|p| module_of(p, &mods))
            .filter(|u| u != m)
            .collect();
        g.insert(m.clone(), uses);
    }
    g
}

/// The top-level modules the `//!` doc of lib.rs lists, in order.
fn documented_order() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split('`').next())
        .map(String::from)
        .collect()
}

#[test]
fn the_layout_doc_names_every_top_level_module_and_only_those() {
    let doc = documented_order();
    let top: BTreeSet<String> = modules()
        .keys()
        .filter(|m| !m.is_empty() && !m.contains("::"))
        .cloned()
        .collect();
    let named: BTreeSet<String> = doc.iter().cloned().collect();
    assert_eq!(named, top, "lib.rs's layout doc and src/ disagree");
    assert_eq!(named.len(), doc.len(), "a module is named twice: {doc:?}");
}

#[test]
fn top_level_modules_use_only_those_after_them() {
    let doc = documented_order();
    let rank = |m: &str| doc.iter().position(|d| d == m.split("::").next().unwrap());
    let mut bad = vec![];
    for (m, uses) in graph() {
        let Some(r) = rank(&m) else { continue };
        for u in uses {
            match rank(&u) {
                Some(ru) if ru < r => bad.push(format!("{m} uses {u}")),
                _ => {}
            }
        }
    }
    assert!(
        bad.is_empty(),
        "uses against the layout:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_module_is_part_of_an_import_cycle() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for u in g.get(m).into_iter().flatten() {
            match state.get(u.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == u).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(u.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(u, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            let cycle = visit(m, &g, &mut state, &mut vec![]);
            assert!(
                cycle.is_none(),
                "import cycle: {}",
                cycle.unwrap().join(" -> ")
            );
        }
    }
}

#[test]
#[ignore = "prints the module graph: cargo test --test layout -- --ignored --nocapture"]
fn print_the_graph() {
    for (m, uses) in graph() {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!(
            "{:<28} -> {}",
            if m.is_empty() { "(root)" } else { &m },
            uses.join(", ")
        );
    }
}

#[test]
fn the_reader_sees_uses_in_groups_and_inline() {
    assert_eq!(
        expand("crate::{a::{b, c as d}, e}"),
        ["crate::a::b", "crate::a::c", "crate::e"]
    );
    let p = used_paths(
        "x::y",
        false,
        "use super::{z, w::Q};\nfn f() { crate::k::f() }",
    );
    assert!(p.contains(&vec!["x".into(), "z".into()]));
    assert!(p.contains(&vec!["x".into(), "w".into(), "Q".into()]));
    assert!(p.contains(&vec!["k".into(), "f".into()]));
    assert_eq!(code_of("a // crate::x\n\"crate::y\" b"), "a \n b\n");
}

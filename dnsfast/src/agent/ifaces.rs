//! Which interfaces carry the program: exact names and globs from
//! `--iface`, kept in step with the links the kernel reports (a pod's veth
//! appears, another goes away), and handed over between agents through
//! pinned links (`--keep-attached`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{bail, Context, Result};
use aya::programs::{xdp::XdpLinkId, XdpMode};
use log::{info, warn};

use crate::{
    dataplane::{
        attach::{ifindex, xdp_mode, AttachMode},
        Dataplane,
    },
    paths::links_dir,
};

/// One `--iface` value: a name, or a glob with `*` and `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IfaceSpec(pub String);

impl IfaceSpec {
    pub(crate) fn is_glob(&self) -> bool {
        self.0.contains(['*', '?'])
    }

    pub(crate) fn matches(&self, name: &str) -> bool {
        wildcard(self.0.as_bytes(), name.as_bytes())
    }
}

/// `*` any run of bytes, `?` one byte, everything else itself.
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point: linear enough for interface names.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// An interface the program is on.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) ifindex: u32,
    /// `None` for a link adopted from a previous agent (its mode is
    /// whatever that agent chose).
    pub(crate) mode: Option<XdpMode>,
    pub(crate) since: SystemTime,
    pub(crate) link: XdpLinkId,
}

/// The wanted set and what is attached.
pub(crate) struct Ifaces {
    pub(crate) specs: Vec<IfaceSpec>,
    pub(crate) mode: AttachMode,
    pub(crate) attached: BTreeMap<String, Attached>,
    /// Detached on request: not attached again though a glob matches.
    pub(crate) excluded: std::collections::BTreeSet<String>,
    /// Where the links are pinned (`links/` under it).
    pub(crate) pin_dir: PathBuf,
}

impl Ifaces {
    /// Checks the flags: each exact name must exist now; a glob may match
    /// nothing yet (pods come later).
    pub(crate) fn new(values: &[String], mode: AttachMode, pin_dir: &Path) -> Result<Self> {
        let mut specs: Vec<IfaceSpec> = Vec::new();
        for v in values {
            let s = IfaceSpec(v.clone());
            if v.is_empty() || v.len() > 15 && !s.is_glob() {
                bail!("--iface '{v}': not an interface name (1 to 15 bytes) or a glob");
            }
            if !s.is_glob() {
                ifindex(v)?;
            }
            if !specs.contains(&s) {
                specs.push(s);
            }
        }
        Ok(Self {
            specs,
            mode,
            attached: BTreeMap::new(),
            excluded: Default::default(),
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    pub(crate) fn wanted(&self, name: &str) -> bool {
        !self.excluded.contains(name) && self.specs.iter().any(|s| s.matches(name))
    }
}

/// The interfaces of this network namespace: name → ifindex.
fn present() -> Result<BTreeMap<String, u32>> {
    let list = nix::net::if_::if_nameindex().context("listing interfaces")?;
    Ok(list
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// Attaches to every wanted interface that lacks the program, and forgets
/// attachments whose interface went away (or came back as a new one).
/// One interface failing does not stop the others; it is logged and tried
/// again at the next change.
pub(crate) fn sync(dp: &mut Dataplane, ifs: &mut Ifaces) -> Result<()> {
    let now = present()?;
    let gone: Vec<String> = ifs
        .attached
        .iter()
        .filter(|(name, a)| now.get(*name) != Some(&a.ifindex))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        if let Some(a) = ifs.attached.remove(&name) {
            // The kernel has already detached a vanished device's link;
            // this closes our end of it, and its pin.
            let _ = std::fs::remove_file(links_dir(&ifs.pin_dir).join(&name));
            let _ = dp.detach(a.link);
            tracing::info!(event = "forget", iface = %name, "{name}: gone; forgotten");
        }
    }
    for (name, index) in &now {
        if ifs.attached.contains_key(name) || !ifs.wanted(name) {
            continue;
        }
        let mode = xdp_mode(ifs.mode, name);
        match attach_pinned(dp, name, mode, &ifs.pin_dir) {
            Ok(link) => {
                tracing::info!(event = "attach", iface = %name, mode = ?mode, "attached to {name} in {mode:?} mode");
                ifs.attached.insert(
                    name.clone(),
                    Attached {
                        ifindex: *index,
                        mode: Some(mode),
                        since: SystemTime::now(),
                        link,
                    },
                );
            }
            Err(e) => warn!("{e:#}"),
        }
    }
    Ok(())
}

/// Detaches one interface on request (`dnsfast unload --iface`).
pub(crate) fn detach(dp: &mut Dataplane, ifs: &mut Ifaces, name: &str) -> Result<()> {
    let Some(a) = ifs.attached.remove(name) else {
        bail!("{name}: not attached");
    };
    // The pin first: while it exists the link stays attached.
    let _ = std::fs::remove_file(links_dir(&ifs.pin_dir).join(name));
    dp.detach(a.link)?;
    // Not attached again when a glob matches it: the operator asked.
    ifs.excluded.insert(name.to_string());
    tracing::info!(event = "detach", iface = %name, "{name}: detached on request");
    Ok(())
}

/// Links a previous agent left pinned with `--keep-attached`.
pub(crate) fn kept_links(pin_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let dir = links_dir(pin_dir);
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// Attaches to `name` and pins the link at once: the program stays on the
/// interface if this process dies (a crash, an OOM kill), where the next
/// agent adopts it. The kernel lease (`agent::lease`) keeps it from
/// answering from knowledge nobody keeps fresh meanwhile.
fn attach_pinned(
    dp: &mut Dataplane,
    name: &str,
    mode: XdpMode,
    pin_dir: &Path,
) -> Result<XdpLinkId> {
    let link = dp.attach(name, mode)?;
    let dir = links_dir(pin_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    match dp.pin_link(link, &path) {
        // Owned again through the pin: `detach` and `release_link` work
        // on it as on any link.
        Ok(()) => dp.adopt(&path),
        Err(e) => {
            // A link that cannot be pinned (a driver without bpf_link
            // support) is still attached, and owned, as before.
            warn!("{name}: {e:#}; it will not outlive the agent");
            dp.attach(name, mode)
        }
    }
}

/// Takes over the links a previous agent pinned: on each interface still
/// wanted, and still the same interface, the new program replaces the old
/// in one step; the others are let go (removing the pin detaches them)
/// and attached fresh by the next `sync`. Nothing here fails the start:
/// a link that cannot be adopted is replaced, never left without a
/// program where there was one.
pub(crate) fn adopt_kept(dp: &mut Dataplane, ifs: &mut Ifaces, pin_dir: &Path) -> Result<usize> {
    let now = present()?;
    let mut adopted = 0;
    for (name, path) in kept_links(pin_dir)? {
        match now.get(&name) {
            Some(index) if ifs.wanted(&name) => {
                let on = Dataplane::pinned_link_ifindex(&path).unwrap_or(0);
                if on != *index {
                    info!(
                        "{name}: the kept link is on interface {on}, and {name} is now {index} (re-created): attaching fresh"
                    );
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                match dp.adopt(&path) {
                    Ok(link) => {
                        ifs.attached.insert(
                            name.clone(),
                            Attached {
                                ifindex: *index,
                                mode: None,
                                since: SystemTime::now(),
                                link,
                            },
                        );
                        info!(
                            "{name}: adopted the previous agent's link (program replaced in place)"
                        );
                        adopted += 1;
                    }
                    Err(e) => {
                        warn!("{name}: {e:#}; attaching fresh");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            _ => {
                info!("{name}: kept by the previous agent, not wanted now; detaching");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(adopted)
}

/// Leaves every link in place for the next agent (`--keep-attached`, a
/// handover): they are pinned since they were attached, so this only
/// lets go of them.
pub(crate) fn keep_all(dp: &mut Dataplane, ifs: &mut Ifaces, pin_dir: &Path) -> Result<()> {
    let dir = links_dir(pin_dir);
    for (name, a) in std::mem::take(&mut ifs.attached) {
        if dir.join(&name).exists() {
            dp.release_link(a.link)?;
        } else {
            dp.pin_link(a.link, &dir.join(&name))?;
        }
        info!("{name}: left attached (link pinned in {})", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        let m = |p: &str, s: &str| IfaceSpec(p.into()).matches(s);
        assert!(m("veth*", "veth1a2b"));
        assert!(m("veth*", "veth"));
        assert!(!m("veth*", "eth0"));
        assert!(m("cali*", "cali12345678901"));
        assert!(m("tst?", "tst1"));
        assert!(!m("tst?", "tst12"));
        assert!(m("*x*", "abxcd"));
        assert!(m("eth0", "eth0"));
        assert!(!m("eth0", "eth01"));
        assert!(m("a*b*c", "a1b2b3c"));
        assert!(!m("a*b*c", "a1b2b3"));
        assert!(IfaceSpec("lxc*".into()).is_glob());
        assert!(!IfaceSpec("eth0".into()).is_glob());
    }
}

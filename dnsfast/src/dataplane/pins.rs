//! The pin directory: where `dnsfast load` pins its program, maps and
//! links, how the control CLI opens them again ([`Pins`]), how the agent
//! readies and cleans it ([`PinDir`]), and the lock that serializes the
//! pattern table's writers.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use dnsfast_common::{
    table::{MAP_PATTERN_DEPTHS, MAP_PATTERN_TAILS},
    Counters, MAP_COUNTERS, MAP_NAMESPACES, MAP_PATTERNS, MAP_TLDS,
};
use log::{info, warn};

use super::{
    label_set::{LabelSet, LabelTable},
    pattern_table::{MapStore, Patterns, Table},
    require_root, sum_counters,
};
use crate::paths::{self, BPFFS_ROOT, BPF_FS_MAGIC};

/// An exclusive `flock` on `dir`, released when dropped: the pattern
/// table's writers (the agent, `dnsfast block|allow`) take turns, since a
/// cuckoo insert moves entries other writers might be moving too.
pub(crate) fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", dir.display()))
}

/// The maps `dnsfast load` pinned, opened by the control CLI.
pub(crate) struct Pins {
    pub(crate) dir: PathBuf,
}

impl Pins {
    /// The pin directory, or a clear error when nothing is loaded there.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        if !paths::map_pin(dir, MAP_PATTERNS).exists() {
            bail!(
                "nothing loaded: no dnsfast maps pinned in {} (is `dnsfast load` running{}?)",
                dir.display(),
                if dir == Path::new(paths::PIN_DIR) {
                    String::new()
                } else {
                    format!(", with --pin-dir {}", dir.display())
                }
            );
        }
        require_root("working on the pinned maps")?;
        check_layout(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    pub(crate) fn map(&self, name: &str) -> Result<Map> {
        let p = paths::map_pin(&self.dir, name);
        let data = MapData::from_pin(&p)
            .with_context(|| format!("opening the pinned map {}", p.display()))?;
        Ok(Map::from_map_data(data)?)
    }

    /// The pinned pattern table. Writers hold [`Pins::lock`] first.
    pub(crate) fn patterns(&self) -> Result<Patterns<MapData>> {
        Ok(Table(MapStore {
            buckets: Array::try_from(self.map(MAP_PATTERNS)?)?,
            depths: Array::try_from(self.map(MAP_PATTERN_DEPTHS)?)?,
            tails: HashMap::try_from(self.map(MAP_PATTERN_TAILS)?)?,
        }))
    }

    /// Serializes the writers of the pinned pattern table (the agent and
    /// `dnsfast block|allow`): held until dropped.
    pub(crate) fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>> {
        lock_dir(&self.dir)
    }

    pub(crate) fn tlds(&self) -> Result<LabelSet<MapData>> {
        Ok(LabelTable(Array::try_from(self.map(MAP_TLDS)?)?))
    }

    pub(crate) fn namespaces(&self) -> Result<LabelSet<MapData>> {
        Ok(LabelTable(Array::try_from(self.map(MAP_NAMESPACES)?)?))
    }

    /// Kernel counters summed over CPUs.
    pub(crate) fn counters(&self) -> Result<Counters> {
        sum_counters(&PerCpuArray::try_from(self.map(MAP_COUNTERS)?)?)
    }
}

/// Mounts bpffs on the pin directory's bpffs root if it is not there yet.
pub(crate) fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if !pin_dir.starts_with(root) {
        return Ok(()); // the caller chose its own bpffs
    }
    let fs = nix::sys::statfs::statfs(root)
        .with_context(|| format!("checking the filesystem at {}", root.display()))?;
    if fs.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    info!("mounting bpffs at {}", root.display());
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {}", root.display()))
}

/// The pin directory; removes what it pinned when dropped, unless told
/// to keep it.
pub(crate) struct PinDir {
    pub(crate) dir: PathBuf,
    keep: bool,
}

impl PinDir {
    /// Readies `dir` for this agent's pins. The caller has made sure no
    /// agent runs there. Pins left by a killed agent are stale (its links
    /// died with it, so nothing was attached) and are removed; pins kept
    /// with `--keep-attached` (`adopting`) stay until the new program has
    /// taken over the links.
    pub(crate) fn prepare(dir: &Path, adopting: bool) -> Result<Self> {
        if dir.exists() && !adopting {
            let stale: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !stale.is_empty() {
                warn!(
                    "{}: removing stale pins of an agent that did not exit cleanly ({});                      nothing of it was attached",
                    dir.display(),
                    stale.join(", ")
                );
                remove_pins(dir);
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: false,
        })
    }

    /// Removes the previous agent's map and program pins (after adoption),
    /// so this agent's can take their names. The links stay pinned: they
    /// are this agent's now.
    pub(crate) fn remove_old(&self) {
        for p in map_and_prog_pins(&self.dir) {
            if p.exists() {
                if let Err(e) = std::fs::remove_file(&p) {
                    warn!("removing pin {}: {e}", p.display());
                }
            }
        }
    }

    /// Leaves everything pinned at drop (`--keep-attached`).
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

/// The layout version of the maps pinned in `dir`, read from their
/// CONFIG (1 when it cannot be read as this version's: the agents before
/// the field had none, and a value of another size is another layout).
pub(crate) fn layout_of(dir: &Path) -> u32 {
    let read = || -> Option<u32> {
        let data = MapData::from_pin(paths::map_pin(dir, dnsfast_common::MAP_CONFIG)).ok()?;
        let a: aya::maps::Array<MapData, dnsfast_common::XdpConfig> =
            aya::maps::Array::try_from(Map::Array(data)).ok()?;
        Some(a.get(&0, 0).ok()?.layout)
    };
    read().unwrap_or(1)
}

/// Fails with one line when the pins in `dir` have another layout than
/// this dnsfast reads.
pub(crate) fn check_layout(dir: &Path) -> Result<()> {
    let have = layout_of(dir);
    if have != dnsfast_common::MAP_LAYOUT {
        anyhow::bail!(
            "the maps pinned in {} have layout {have}, and this dnsfast reads layout {}: \
             use the dnsfast of the agent that pinned them",
            dir.display(),
            dnsfast_common::MAP_LAYOUT
        );
    }
    Ok(())
}

fn map_and_prog_pins(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    paths::PINNED_MAPS
        .iter()
        .map(|m| paths::map_pin(dir, m))
        .chain([paths::prog_pin(dir)])
}

/// Removes the pins dnsfast makes under `dir`, and `dir` if that leaves it
/// empty. Anything else there is left alone.
pub(crate) fn remove_pins(dir: &Path) {
    for p in map_and_prog_pins(dir) {
        if p.exists() {
            if let Err(e) = std::fs::remove_file(&p) {
                warn!("removing pin {}: {e}", p.display());
            }
        }
    }
    let links = paths::links_dir(dir);
    if let Ok(rd) = std::fs::read_dir(&links) {
        for e in rd.flatten() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                warn!("removing pin {}: {err}", e.path().display());
            }
        }
        let _ = std::fs::remove_dir(&links);
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!("removing {}: {e}", dir.display());
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.keep {
            remove_pins(&self.dir);
        }
    }
}

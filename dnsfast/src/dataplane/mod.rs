//! Everything that touches BPF: the embedded XDP object loaded and
//! verified ([`Dataplane`]), its maps written from a rule set, interfaces
//! attached, and the pins the CLI opens again.
//!
//! - `pattern_table`: the exact pattern table (buckets, depths, tails);
//! - `label_set`: auto mode's TLD and namespace sets;
//! - `cuckoo`: the placement both of them use;
//! - `attach`: the attach mode and interface lookups;
//! - `pins`: the pin directory, and the maps opened from it;
//! - `kernel_version`: the oldest kernel the program is verified on;
//! - `budget`: the agent's memory by part, kernel maps included.
//!
//! Uses `rules` and `config` (what to write) and `paths`; nothing above.

pub(crate) mod attach;
pub(crate) mod budget;
pub(crate) mod cuckoo;
pub(crate) mod kernel_version;
pub(crate) mod label_set;
pub(crate) mod pattern_table;
pub(crate) mod pins;

use std::{borrow::Borrow, net::IpAddr, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::ProgramArray;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use std::collections::BTreeSet;

use crate::{
    config::Config as FileConfig,
    paths,
    rules::{fold_namespaces, rules_of, unfold_namespaces, RuleSet},
};
use dnsfast_common::{
    answer::{AnswerKey, CachedAnswer, ListenKey},
    pattern::{rule_entry, Action, Pattern},
    table::{bucket_count, GLOBAL_BUCKET_MASK, MAP_PATTERN_DEPTHS, MAP_PATTERN_TAILS},
    AddrKey, Counters, WatchState, XdpConfig, CACHE_PROG_NAME, DEFAULT_MAX_PATTERNS, FAMILY_V4,
    FAMILY_V6, FLOOR_PROG_NAME, GLOBAL_BENCH_MODE, JUMP_CACHE, JUMP_WATCH, MAP_ANSWERS, MAP_CONFIG,
    MAP_COUNTERS, MAP_EVENTS, MAP_JUMPS, MAP_LEASE, MAP_LISTEN_ADDRS, MAP_NAMESPACES, MAP_PATTERNS,
    MAP_SERVER_ADDRS, MAP_TLDS, MAP_WATCH_STATE, MAX_NAMESPACES, MAX_PORTS, MAX_TLDS, PROG_NAME,
    WATCH_PROG_NAME,
};
use label_set::{add_labels, remove_other_labels, LabelSet, LabelTable};
pub use pattern_table::Diff;
use pattern_table::{reconcile_rules, MapStore, Patterns, Table};

/// The XDP object, built by `build.rs` and embedded so that one binary is
/// all a node needs.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("DNSFAST_BPF_OBJ"));

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Treat every DNS message as a query; for `cargo xtask bench` only.
    pub bench_mode: bool,
    /// Capacity of the pattern table.
    pub max_patterns: u32,
    /// Capacity of the kernel answer cache; 0 leaves the cache program out.
    pub answer_cache: u32,
}

/// The kernel answer cache: the XDP program's `ANSWERS` map.
pub(crate) type AnswerMap = HashMap<MapData, AnswerKey, CachedAnswer>;

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            bench_mode: false,
            max_patterns: DEFAULT_MAX_PATTERNS,
            answer_cache: 0,
        }
    }
}

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Reader of the program's aya-log ring buffer (feature `ebpf-log`).
    #[cfg(feature = "ebpf-log")]
    pub(crate) logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Dataplane {
    /// Loads the object, verifies the program and writes the default config.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let bench = u8::from(opts.bench_mode);
        let buckets = bucket_count(opts.max_patterns);
        let mask = buckets - 1;
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_BENCH_MODE, &bench, true)
            .override_global(GLOBAL_BUCKET_MASK, &mask, true)
            .map_max_entries(MAP_PATTERNS, buckets)
            .map_max_entries(MAP_PATTERN_TAILS, opts.max_patterns.max(1))
            .map_max_entries(MAP_ANSWERS, opts.answer_cache.max(1))
            .load(OBJECT)
            .context("creating the eBPF maps (are you root, with CAP_BPF and CAP_NET_ADMIN?)")?;
        // The log map must be claimed before the program loads.
        #[cfg(feature = "ebpf-log")]
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("aya-log unavailable: {e}");
                None
            }
        };
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| anyhow!("program {PROG_NAME} missing from the embedded object"))?
            .try_into()?;
        prog.load().map_err(explain_load_error)?;
        let mut dp = Self {
            ebpf,
            #[cfg(feature = "ebpf-log")]
            logger,
        };
        dp.set_config(&XdpConfig::default())?;
        // No expiry until an agent takes the lease over (`renew_lease`):
        // the tests and the bench run the program without one.
        dp.renew_lease(u64::MAX)?;
        // Verified now, so that `dnsfast watch` cannot fail later.
        dp.loaded(WATCH_PROG_NAME)?;
        if opts.answer_cache > 0 {
            dp.enable_answer_cache()?;
        }
        Ok(dp)
    }

    /// Loads the cache program and puts it in the main program's jump
    /// table: from then on, queries no block pattern covers are looked up
    /// in `ANSWERS` before they go up.
    pub(crate) fn enable_answer_cache(&mut self) -> Result<()> {
        let fd = self.loaded(CACHE_PROG_NAME)?.fd()?.try_clone()?;
        let mut jumps: ProgramArray<&mut MapData> =
            ProgramArray::try_from(self.map_mut(MAP_JUMPS)?)?;
        jumps
            .set(JUMP_CACHE, &fd, 0)
            .context("putting the cache program in the jump table")?;
        Ok(())
    }

    /// Puts the watch program in the jump table (someone watches) or takes
    /// it out (nobody does: the decided queries skip it).
    pub fn set_watch(&mut self, on: bool) -> Result<()> {
        if on {
            let fd = self.loaded(WATCH_PROG_NAME)?.fd()?.try_clone()?;
            let mut jumps: ProgramArray<&mut MapData> =
                ProgramArray::try_from(self.map_mut(MAP_JUMPS)?)?;
            jumps
                .set(JUMP_WATCH, &fd, 0)
                .context("putting the watch program in the jump table")
        } else {
            let mut jumps: ProgramArray<&mut MapData> =
                ProgramArray::try_from(self.map_mut(MAP_JUMPS)?)?;
            match jumps.clear_index(&JUMP_WATCH) {
                Ok(()) => Ok(()),
                // Already empty.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc_enoent()) =>
                {
                    Ok(())
                }
                Err(e) => Err(e).context("taking the watch program out of the jump table"),
            }
        }
    }

    /// The watch events ring, handed over to its reader.
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<MapData>> {
        let m = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or_else(|| anyhow!("map {MAP_EVENTS} missing or already taken"))?;
        Ok(aya::maps::RingBuf::try_from(m)?)
    }

    /// The watch program's tallies summed over CPUs: (sent, dropped).
    pub fn watch_tally(&self) -> Result<(u64, u64)> {
        let m = self
            .ebpf
            .map(MAP_WATCH_STATE)
            .ok_or_else(|| anyhow!("map {MAP_WATCH_STATE} missing"))?;
        let a: PerCpuArray<&MapData, WatchState> = PerCpuArray::try_from(m)?;
        let v = a.get(&0, 0).context("reading the WATCH_STATE map")?;
        Ok(v.iter()
            .fold((0, 0), |(s, d), w| (s + w.sent, d + w.dropped)))
    }

    /// The answer cache map, handed over to its owner (the forwarder).
    /// Copies the live entries of the answer cache pinned at `pin` (the
    /// previous agent's) into this one's: the cache stays warm across a
    /// handover. Returns how many were copied.
    pub(crate) fn warm_answers_from(&mut self, pin: &Path) -> Result<usize> {
        let old = MapData::from_pin(pin)
            .with_context(|| format!("opening the previous answer cache {}", pin.display()))?;
        let old: HashMap<MapData, AnswerKey, CachedAnswer> =
            HashMap::try_from(aya::maps::Map::LruHashMap(old))?;
        let mut mine: HashMap<&mut MapData, AnswerKey, CachedAnswer> =
            HashMap::try_from(self.map_mut(MAP_ANSWERS)?)?;
        let mut n = 0;
        for (k, v) in old.iter().flatten() {
            if mine.insert(k, v, 0).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn take_answer_map(&mut self) -> Result<AnswerMap> {
        let m = self
            .ebpf
            .take_map(MAP_ANSWERS)
            .ok_or_else(|| anyhow!("map {MAP_ANSWERS} missing or already taken"))?;
        Ok(HashMap::try_from(m)?)
    }

    pub(crate) fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| anyhow!("program {PROG_NAME} missing"))?
            .try_into()?)
    }

    /// Loads every other program in the object (the bench's empty program),
    /// so that all of it has passed the verifier.
    pub fn load_all(&mut self) -> Result<()> {
        for name in [FLOOR_PROG_NAME, CACHE_PROG_NAME, WATCH_PROG_NAME] {
            self.loaded(name)?;
        }
        Ok(())
    }

    /// Program `name` of the object, loaded (verified) if it was not yet.
    fn loaded(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().map_err(explain_load_error)?;
        }
        Ok(prog)
    }

    /// Per loaded program: how many instructions the verifier walked to
    /// accept it (`None` before Linux 5.16).
    pub fn verified_insns(&self) -> Result<Vec<(String, Option<u32>)>> {
        let mut out = vec![];
        for (name, prog) in self.ebpf.programs() {
            if let Ok(info) = prog.info() {
                out.push((name.to_string(), info.verified_instruction_count()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Attaches to `iface`; the link lives as long as `self`, or until
    /// `detach`.
    pub(crate) fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        self.program()?
            .attach(iface, mode)
            .map_err(|e| anyhow!("attaching XDP ({mode:?}) to {iface}: {}", error_chain(&e)))
    }

    /// Detaches one link made by `attach` or `adopt`.
    pub(crate) fn detach(&mut self, link: XdpLinkId) -> Result<()> {
        self.program()?
            .detach(link)
            .map_err(|e| anyhow!("detaching XDP: {}", error_chain(&e)))
    }

    /// Pins a link at `path`, where it outlives this process (and keeps
    /// the program attached) until a new agent adopts it or the pin is
    /// removed.
    pub(crate) fn pin_link(&mut self, link: XdpLinkId, path: &Path) -> Result<()> {
        let link = self
            .program()?
            .take_link(link)
            .map_err(|e| anyhow!("taking the link: {}", error_chain(&e)))?;
        let fd = FdLink::try_from(link).map_err(|e| {
            anyhow!(
                "the link is not a bpf_link ({}); it cannot outlive the agent",
                error_chain(&e)
            )
        })?;
        fd.pin(path).map_err(|e| {
            anyhow!(
                "pinning the link at {}: {}",
                path.display(),
                error_chain(&e)
            )
        })?;
        Ok(())
    }

    /// Lets go of a link this agent pinned: the pin keeps it (and the
    /// program on it) in place for the next agent; nothing is detached.
    pub(crate) fn release_link(&mut self, link: XdpLinkId) -> Result<()> {
        let link = self
            .program()?
            .take_link(link)
            .map_err(|e| anyhow!("taking the link: {}", error_chain(&e)))?;
        drop(link);
        Ok(())
    }

    /// The interface a pinned XDP link is attached to (`ifindex` in its
    /// fdinfo), 0 when its interface went away (the kernel detaches it).
    pub(crate) fn pinned_link_ifindex(path: &Path) -> Result<u32> {
        let fd = FdLink::from(open_pinned_link(path)?);
        let id = fd
            .info()
            .map_err(|e| anyhow!("reading the link {}: {}", path.display(), error_chain(&e)))?
            .id();
        let want = format!("link_id:\t{id}");
        for e in std::fs::read_dir("/proc/self/fdinfo")?.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if text.lines().any(|l| l == want) {
                return Ok(text
                    .lines()
                    .find_map(|l| l.strip_prefix("ifindex:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0));
            }
        }
        bail!(
            "link {id} of {} not found among this process's files",
            path.display()
        )
    }

    /// Takes over the link pinned at `path` by a previous agent: this
    /// program replaces the old one on it in one step (`BPF_LINK_UPDATE`),
    /// so the interface is never without a program. The pin itself is left
    /// to the caller.
    pub(crate) fn adopt(&mut self, path: &Path) -> Result<XdpLinkId> {
        let link = XdpLink::try_from(FdLink::from(open_pinned_link(path)?))
            .map_err(|e| anyhow!("{} is not an XDP link: {}", path.display(), error_chain(&e)))?;
        self.program()?.attach_to_link(link).map_err(|e| {
            anyhow!(
                "replacing the program on {}: {}",
                path.display(),
                error_chain(&e)
            )
        })
    }

    /// The kernel's id of the main program (what `bpftool prog show` lists).
    pub(crate) fn program_id(&mut self) -> Result<u32> {
        Ok(self.program()?.info()?.id())
    }

    /// Extends the agent's lease to `until_ns` (CLOCK_MONOTONIC).
    pub fn renew_lease(&mut self, until_ns: u64) -> Result<()> {
        let mut a: Array<&mut MapData, u64> = Array::try_from(self.map_mut(MAP_LEASE)?)?;
        a.set(0, until_ns, 0).context("writing the LEASE map")?;
        Ok(())
    }

    pub fn set_config(&mut self, cfg: &XdpConfig) -> Result<()> {
        let mut a: Array<&mut MapData, XdpConfig> = Array::try_from(self.map_mut(MAP_CONFIG)?)?;
        a.set(0, cfg, 0).context("writing the CONFIG map")?;
        Ok(())
    }

    /// Makes `SERVER_ADDRS` hold exactly `want`: additions, then the
    /// config (which may turn the filter on or off), then removals, so a
    /// query to an address both settings accept is never passed up.
    pub fn set_xdp(&mut self, cfg: &XdpConfig, want: &[AddrKey]) -> Result<()> {
        let mut m: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(MAP_SERVER_ADDRS)?)?;
        for k in want {
            m.insert(k, 1, 0).context("writing the SERVER_ADDRS map")?;
        }
        let gone: Vec<AddrKey> = m.keys().flatten().filter(|k| !want.contains(k)).collect();
        self.set_config(cfg)?;
        let mut m: HashMap<&mut MapData, AddrKey, u32> =
            HashMap::try_from(self.map_mut(MAP_SERVER_ADDRS)?)?;
        for k in &gone {
            m.remove(k).context("removing from the SERVER_ADDRS map")?;
        }
        Ok(())
    }

    /// Lets the answer cache answer queries sent to `addr` (an unspecified
    /// IP stands for every address on that port).
    pub fn add_listen_addr(&mut self, addr: std::net::SocketAddr) -> Result<()> {
        let ip = addr_key(addr.ip());
        let key = ListenKey {
            family: ip.family,
            port: u32::from(addr.port()),
            addr: ip.addr,
        };
        let mut m: HashMap<&mut MapData, ListenKey, u32> =
            HashMap::try_from(self.map_mut(MAP_LISTEN_ADDRS)?)?;
        m.insert(key, 1, 0)
            .with_context(|| format!("writing {addr} to the LISTEN_ADDRS map"))
    }

    pub fn insert_pattern(&mut self, p: &Pattern, action: Action) -> Result<()> {
        let (key, rule) = rule_entry(p, action);
        self.patterns()?
            .insert(&key, rule)
            .with_context(|| format!("inserting pattern {p} ({action})"))?;
        Ok(())
    }

    pub fn remove_pattern(&mut self, p: &Pattern) -> Result<()> {
        let (key, _) = rule_entry(p, Action::Block);
        self.patterns()?
            .remove(&key)
            .with_context(|| format!("removing pattern {p}"))?;
        Ok(())
    }

    /// Writes `add` (key → rule) to the pattern table, longest key first,
    /// then removes the `remove` keys, shortest first: a name below a
    /// changed entry meets its more specific entry before the broader one
    /// arrives, and loses the broader one before the more specific goes.
    /// The caller holds the pin directory's lock. Stops at the first
    /// failure: what was written stays, and the error names the key.
    pub fn write_rules(
        &mut self,
        add: &[(Vec<u8>, dnsfast_common::Rule)],
        remove: &[Vec<u8>],
    ) -> Result<()> {
        let mut add: Vec<&(Vec<u8>, dnsfast_common::Rule)> = add.iter().collect();
        add.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        let mut remove: Vec<&Vec<u8>> = remove.iter().collect();
        remove.sort_by_key(|k| k.len());
        let mut t = self.patterns()?;
        for (k, r) in add {
            t.insert(k, *r).with_context(|| {
                format!(
                    "writing {} to the PATTERNS map",
                    dnsfast_common::pattern::key_name(k)
                )
            })?;
        }
        for k in remove {
            t.remove(k).with_context(|| {
                format!(
                    "removing {} from the PATTERNS map",
                    dnsfast_common::pattern::key_name(k)
                )
            })?;
        }
        Ok(())
    }

    /// The pattern table, on this object's maps. The agent's writes hold
    /// the pin directory's lock once the maps are pinned (see
    /// `pins::lock_dir`).
    fn patterns(&mut self) -> Result<Patterns<&mut MapData>> {
        let (mut buckets, mut depths, mut tails) = (None, None, None);
        for (name, m) in self.ebpf.maps_mut() {
            match name {
                MAP_PATTERNS => buckets = Some(m),
                MAP_PATTERN_DEPTHS => depths = Some(m),
                MAP_PATTERN_TAILS => tails = Some(m),
                _ => {}
            }
        }
        let missing = |n: &str| anyhow!("map {n} missing from the embedded object");
        Ok(Table(MapStore {
            buckets: Array::try_from(buckets.ok_or_else(|| missing(MAP_PATTERNS))?)?,
            depths: Array::try_from(depths.ok_or_else(|| missing(MAP_PATTERN_DEPTHS))?)?,
            tails: HashMap::try_from(tails.ok_or_else(|| missing(MAP_PATTERN_TAILS))?)?,
        }))
    }

    fn tlds(&mut self) -> Result<LabelSet<&mut MapData>> {
        Ok(LabelTable(Array::try_from(self.map_mut(MAP_TLDS)?)?))
    }

    fn namespaces(&mut self) -> Result<LabelSet<&mut MapData>> {
        Ok(LabelTable(Array::try_from(self.map_mut(MAP_NAMESPACES)?)?))
    }

    /// What the tables hold now (config plus run-time changes), with the
    /// namespace suffixes unfolded: the rules as the forwarder uses them.
    pub fn rules(&mut self) -> Result<RuleSet> {
        let folded = self.patterns()?.rules()?;
        let ns = self.namespaces()?.labels()?;
        Ok(unfold_namespaces(&folded, &ns))
    }

    pub(crate) fn tld_count(&mut self) -> Result<usize> {
        Ok(self.tlds()?.labels()?.len())
    }

    /// Makes the kernel tables stand for exactly `rules` (folded, see
    /// `rules::fold_namespaces`) and `tlds`. Labels join the namespace and
    /// TLD sets before the patterns change and leave after, so a name whose
    /// verdict is the same in both configs keeps it throughout.
    pub fn reconcile(&mut self, rules: &RuleSet, tlds: &BTreeSet<String>) -> Result<TableDiff> {
        let (folded, ns) = fold_namespaces(rules);
        // Checked before anything is written: nothing half-applied.
        for (what, n, cap) in [
            ("namespaces", ns.len(), MAX_NAMESPACES),
            ("TLD labels", tlds.len(), MAX_TLDS),
        ] {
            if n > cap as usize {
                bail!("{n} {what} do not fit the kernel's set of {cap}");
            }
        }
        let ns_added = add_labels(&mut self.namespaces()?, &ns)?;
        let tlds_added = add_labels(&mut self.tlds()?, tlds)?;
        let patterns = reconcile_rules(&mut self.patterns()?, &folded)?;
        let ns_removed = remove_other_labels(&mut self.namespaces()?, &ns)?;
        let tlds_removed = remove_other_labels(&mut self.tlds()?, tlds)?;
        Ok(TableDiff {
            patterns,
            namespaces: Diff {
                added: ns_added,
                changed: 0,
                removed: ns_removed,
            },
            tlds: Diff {
                added: tlds_added,
                changed: 0,
                removed: tlds_removed,
            },
        })
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let m = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or_else(|| anyhow!("map {MAP_COUNTERS} missing"))?;
        sum_counters(&PerCpuArray::try_from(m)?)
    }

    /// Pins the main program under `dir`, so `dnsfast explain` can run it.
    pub(crate) fn pin_program(&mut self, dir: &Path) -> Result<()> {
        let path = paths::prog_pin(dir);
        self.program()?
            .pin(&path)
            .with_context(|| format!("pinning the program at {}", path.display()))
    }

    /// Pins the shared maps under `dir` (which must exist).
    pub fn pin_maps(&self, dir: &Path) -> Result<()> {
        for name in paths::PINNED_MAPS {
            let m = self
                .ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing"))?;
            let path = paths::map_pin(dir, name);
            m.pin(&path)
                .with_context(|| format!("pinning map {name} at {}", path.display()))?;
        }
        Ok(())
    }

    /// Runs the program once on `packet` through `BPF_PROG_TEST_RUN` and
    /// returns the verdict and the packet as the program left it.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        // Room for answers that grow the frame (the answer cache).
        let mut out = vec![0u8; packet.len() + 1024];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        let r = self
            .program()?
            .test_run(opts)
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN: {}", error_chain(&e)))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs `packet` `repeat` times in the kernel and returns the kernel's
    /// average time per run. `floor` times the empty program instead.
    pub fn time_run(
        &mut self,
        packet: &[u8],
        repeat: u32,
        floor: bool,
    ) -> Result<std::time::Duration> {
        let name = if floor { FLOOR_PROG_NAME } else { PROG_NAME };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?;
        if floor && prog.fd().is_err() {
            prog.load().map_err(explain_load_error)?;
        }
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat;
        let r = prog
            .test_run(opts)
            .map_err(|e| anyhow!("BPF_PROG_TEST_RUN: {}", error_chain(&e)))?;
        Ok(r.duration)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the embedded object"))
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

/// The `COUNTERS` map summed over CPUs.
pub(crate) fn sum_counters<T: Borrow<MapData>>(a: &PerCpuArray<T, Counters>) -> Result<Counters> {
    let v = a.get(&0, 0).context("reading the COUNTERS map")?;
    Ok(Counters::sum(v.iter()))
}

/// The XDP program's settings and server addresses from `cfg`.
pub(crate) fn apply_xdp(dp: &mut Dataplane, cfg: &FileConfig) -> Result<()> {
    let mut xc = XdpConfig::default();
    if cfg.xdp.ports.len() > MAX_PORTS {
        bail!("at most {MAX_PORTS} DNS ports");
    }
    xc.ports = [0; MAX_PORTS];
    xc.ports[..cfg.xdp.ports.len()].copy_from_slice(&cfg.xdp.ports);
    xc.filter_dst = u32::from(!cfg.xdp.server_addrs.is_empty());
    if cfg.xdp.client_qps > 0 {
        xc.client_interval_ns = 1_000_000_000 / cfg.xdp.client_qps as u64;
        xc.client_burst_ns = xc.client_interval_ns * cfg.xdp.client_burst as u64;
    }
    let addrs: Vec<AddrKey> = cfg.xdp.server_addrs.iter().map(|a| addr_key(*a)).collect();
    dp.set_xdp(&xc, &addrs)
}

/// The TLD labels of the auto rules (none without auto mode).
pub(crate) fn tlds_of(cfg: &FileConfig) -> BTreeSet<String> {
    cfg.derived
        .as_ref()
        .map(|d| d.tlds.clone())
        .unwrap_or_default()
}

/// Writes settings, server addresses, TLDs and patterns into the maps.
pub(crate) fn apply(dp: &mut Dataplane, cfg: &FileConfig) -> Result<()> {
    dp.reconcile(&rules_of(&cfg.patterns), &tlds_of(cfg))?;
    apply_xdp(dp, cfg)
}

/// The link pinned at `path`.
fn open_pinned_link(path: &Path) -> Result<PinnedLink> {
    PinnedLink::from_pin(path).map_err(|e| {
        anyhow!(
            "opening the pinned link {}: {}",
            path.display(),
            error_chain(&e)
        )
    })
}

/// An address as the maps key it (`SERVER_ADDRS`, and the address part of
/// `LISTEN_ADDRS`): family, then the bytes, IPv4 in the first four.
pub fn addr_key(a: IpAddr) -> AddrKey {
    let mut k = AddrKey::default();
    match a {
        IpAddr::V4(v4) => {
            k.family = FAMILY_V4;
            k.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            k.family = FAMILY_V6;
            k.addr = v6.octets();
        }
    }
    k
}

/// Runs the program pinned at `prog` once on `packet` through
/// `BPF_PROG_TEST_RUN`: the loaded program's own verdict and the packet as
/// it left it (what `dnsfast explain` shows; the bench polls it).
pub fn test_run_pinned(prog: &Path, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
    let p = Xdp::from_pin(prog, aya_obj::programs::XdpAttachType::Interface)
        .with_context(|| format!("opening the pinned program {}", prog.display()))?;
    let mut out = vec![0u8; packet.len() + 1024];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    let r = p
        .test_run(opts)
        .context("BPF_PROG_TEST_RUN on the loaded program")?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Turns a program load failure into one message; a verifier rejection
/// carries the tail of the verifier log, which is where the reason is.
fn explain_load_error(e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            // DNSFAST_VERIFIER_LOG_LINES=N shows more of the log.
            let keep = std::env::var("DNSFAST_VERIFIER_LOG_LINES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(15);
            let tail = lines[lines.len().saturating_sub(keep)..].join("\n  ");
            anyhow!(
                "the kernel verifier rejected the XDP program ({io_error}); log tail:\n  {tail}"
            )
        }
        other => anyhow!("loading the XDP program: {}", error_chain(&other)),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Fails early, in one line, when not running with the privileges loading
/// needs.
pub(crate) fn require_root(what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    if uid != 0 {
        bail!("{what} needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); run it with sudo");
    }
    Ok(())
}

/// ENOENT, which deleting an empty program array slot returns.
const fn libc_enoent() -> i32 {
    2
}

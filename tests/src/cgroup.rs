//! A memory cgroup for one test's agent: a hard limit, and afterwards its
//! peak and whether the kernel OOM-killed anything in it. cgroup v2
//! (`memory.max`) where the memory controller is on the unified
//! hierarchy, else v1 (`memory.limit_in_bytes`). BPF maps the agent
//! creates are charged to it too.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn write(p: &Path, v: &str) -> Result<()> {
    std::fs::write(p, v).with_context(|| format!("writing {v} to {}", p.display()))
}

impl MemCgroup {
    /// A new cgroup named `name` limited to `limit` bytes (no swap).
    pub fn new(name: &str, limit: u64) -> Result<MemCgroup> {
        let unified = Path::new("/sys/fs/cgroup");
        let v2 = read(&unified.join("cgroup.controllers")).is_ok_and(|c| c.contains("memory"));
        let dir = if v2 {
            let sub = read(&unified.join("cgroup.subtree_control")).unwrap_or_default();
            if !sub.contains("memory") {
                write(&unified.join("cgroup.subtree_control"), "+memory")?;
            }
            unified.join(name)
        } else {
            let v1 = unified.join("memory");
            if !v1.join("memory.limit_in_bytes").exists() {
                bail!("no memory cgroup controller (neither cgroup v2 nor v1)");
            }
            v1.join(name)
        };
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cg = MemCgroup { dir, v2 };
        if v2 {
            write(&cg.dir.join("memory.max"), &limit.to_string())?;
            let _ = write(&cg.dir.join("memory.swap.max"), "0");
        } else {
            write(&cg.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
            let _ = write(
                &cg.dir.join("memory.memsw.limit_in_bytes"),
                &limit.to_string(),
            );
        }
        Ok(cg)
    }

    /// A shell line that moves itself into the cgroup, then runs `cmd`.
    pub fn enter_then(&self, cmd: &str) -> String {
        format!(
            "echo $$ > {} && exec {cmd}",
            self.dir.join("cgroup.procs").display()
        )
    }

    /// Bytes in use at most since it was made (v2 without `memory.peak`,
    /// before Linux 5.19: in use now).
    pub fn peak(&self) -> u64 {
        let f = if self.v2 {
            if self.dir.join("memory.peak").exists() {
                "memory.peak"
            } else {
                "memory.current"
            }
        } else {
            "memory.max_usage_in_bytes"
        };
        read(&self.dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Processes the kernel OOM-killed in it.
    pub fn oom_kills(&self) -> u64 {
        let f = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        read(&self.dir.join(f))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for MemCgroup {
    /// Removed once its processes are gone (the lab kills them first).
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

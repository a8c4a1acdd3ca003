//! Fixture cgroup trees on disk, in the kernel's real file formats, for the cgroup unit tests and the
//! benchmark (`benches/cgroup.rs` includes this file by path). Test code only: std and nothing else.
//!
//! The file contents are copied from a real host (kernel 6.x): the key order, the keys that are not
//! read (user_usec, nr_bursts, rss_huge, …) and the trailing newlines are as the kernel writes them, so
//! a parser that only works on a tidy subset fails here.

#![allow(dead_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What one container's files say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub cpu_usage_usec: u64,
    pub memory_bytes: u64,
    pub inactive_file_bytes: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

impl Sample {
    /// A distinct, plausible sample for container number `n`.
    pub fn nth(n: u64) -> Sample {
        Sample {
            cpu_usage_usec: 1_000_000 + n * 7_919,
            memory_bytes: 50 * 1024 * 1024 + n * 4096,
            inactive_file_bytes: 3 * 1024 * 1024 + n * 512,
            nr_periods: 100 + n,
            nr_throttled: n % 7,
            throttled_usec: (n % 7) * 12_345,
        }
    }
}

/// The v1 controllers written by [`v1_root`]; the container files go into each.
pub const V1_CONTROLLERS: [&str; 3] = ["cpu", "cpuacct", "memory"];

fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, text)
}

/// A cgroup v2 root: `cgroup.controllers` and the root's own files, as on a systemd host.
pub fn v2_root(root: &Path) -> io::Result<()> {
    write(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    )?;
    write(
        &root.join("cgroup.subtree_control"),
        "cpuset cpu io memory pids\n",
    )?;
    write(&root.join("cpu.stat"), &v2_cpu_stat(&Sample::nth(0), false))?;
    fs::create_dir_all(root.join("system.slice"))?;
    fs::create_dir_all(root.join("ecstasks.slice"))
}

/// A cgroup v1 root: one directory per controller. `co_mounted` puts cpu and cpuacct in one
/// `cpu,cpuacct` hierarchy with `cpu` and `cpuacct` symlinks to it, as Amazon Linux 2 mounts them.
pub fn v1_root(root: &Path, co_mounted: bool) -> io::Result<()> {
    if co_mounted {
        fs::create_dir_all(root.join("cpu,cpuacct"))?;
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu"))?;
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct"))?;
    } else {
        fs::create_dir_all(root.join("cpu"))?;
        fs::create_dir_all(root.join("cpuacct"))?;
    }
    for other in [
        "memory", "cpuset", "devices", "freezer", "blkio", "pids", "systemd",
    ] {
        fs::create_dir_all(root.join(other))?;
    }
    write(&root.join("cpuacct/cpuacct.usage"), "918273645546\n")?;
    write(&root.join("memory/memory.usage_in_bytes"), "1949696000\n")
}

/// A hybrid root: v1 controllers plus the unified hierarchy at `unified/` with no controllers of its
/// own — this is what the development host runs (Docker on cgroupfs v1, systemd in hybrid mode).
pub fn hybrid_root(root: &Path) -> io::Result<()> {
    v1_root(root, false)?;
    write(&root.join("unified/cgroup.controllers"), "hugetlb\n")?;
    write(&root.join("unified/cgroup.subtree_control"), "\n")
}

/// Writes a container's v2 cgroup at `root/rel`, cpu controller enabled (throttling keys present).
pub fn v2_container(root: &Path, rel: &str, s: &Sample) -> io::Result<PathBuf> {
    let dir = root.join(rel);
    write(&dir.join("cpu.stat"), &v2_cpu_stat(s, true))?;
    write(
        &dir.join("memory.current"),
        &format!("{}\n", s.memory_bytes),
    )?;
    write(&dir.join("memory.stat"), &v2_memory_stat(s))?;
    write(&dir.join("memory.max"), "max\n")?;
    write(&dir.join("cgroup.procs"), "4242\n")?;
    Ok(dir)
}

/// Writes a container's v1 cgroup at `<controller>/rel` for each controller in [`V1_CONTROLLERS`].
pub fn v1_container(root: &Path, rel: &str, s: &Sample) -> io::Result<PathBuf> {
    let cpuacct = root.join("cpuacct").join(rel);
    write(
        &cpuacct.join("cpuacct.usage"),
        &format!("{}\n", s.cpu_usage_usec * 1_000 + 417),
    )?;
    write(&cpuacct.join("cpuacct.usage_percpu"), "313285464 0 \n")?;
    write(&cpuacct.join("cpuacct.stat"), "user 29\nsystem 2\n")?;
    let cpu = root.join("cpu").join(rel);
    write(
        &cpu.join("cpu.stat"),
        &format!(
            "nr_periods {}\nnr_throttled {}\nthrottled_time {}\nnr_bursts 0\nburst_time 0\n",
            s.nr_periods,
            s.nr_throttled,
            s.throttled_usec * 1_000 + 999
        ),
    )?;
    write(&cpu.join("cpu.shares"), "1024\n")?;
    let memory = root.join("memory").join(rel);
    write(
        &memory.join("memory.usage_in_bytes"),
        &format!("{}\n", s.memory_bytes),
    )?;
    write(&memory.join("memory.stat"), &v1_memory_stat(s))?;
    write(
        &memory.join("memory.limit_in_bytes"),
        "9223372036854771712\n",
    )?;
    Ok(cpuacct)
}

/// A hybrid host's container: v1 controllers plus the unified side's directory, whose `cpu.stat`
/// holds only the basic keys (no controller there).
pub fn hybrid_container(root: &Path, rel: &str, s: &Sample) -> io::Result<PathBuf> {
    let dir = v1_container(root, rel, s)?;
    let unified = root.join("unified").join(rel);
    write(&unified.join("cpu.stat"), &v2_cpu_stat(s, false))?;
    write(&unified.join("cgroup.procs"), "4242\n")?;
    Ok(dir)
}

/// v2 `cpu.stat`. Without the cpu controller enabled for the cgroup (`cpu_controller` = false) the
/// kernel writes only the usage keys, no nr_periods / throttling.
pub fn v2_cpu_stat(s: &Sample, cpu_controller: bool) -> String {
    let user = s.cpu_usage_usec * 2 / 3;
    let mut text = format!(
        "usage_usec {}\nuser_usec {}\nsystem_usec {}\nnice_usec 0\ncore_sched.force_idle_usec 0\n",
        s.cpu_usage_usec,
        user,
        s.cpu_usage_usec - user
    );
    if cpu_controller {
        text.push_str(&format!(
            "nr_periods {}\nnr_throttled {}\nthrottled_usec {}\nnr_bursts 0\nburst_usec 0\n",
            s.nr_periods, s.nr_throttled, s.throttled_usec
        ));
    }
    text
}

pub fn v2_memory_stat(s: &Sample) -> String {
    let file = s.inactive_file_bytes + 4096;
    let anon = s.memory_bytes.saturating_sub(file);
    format!(
        "anon {anon}\nfile {file}\nkernel 1220608\nkernel_stack 49152\npagetables 86016\n\
         sec_pagetables 0\npercpu 480\nsock 0\nvmalloc 0\nshmem 0\nzswap 0\nzswapped 0\n\
         file_mapped 1347584\nfile_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\n\
         shmem_thp 0\ninactive_anon {anon}\nactive_anon 4096\ninactive_file {}\nactive_file 4096\n\
         unevictable 0\nslab_reclaimable 398136\nslab_unreclaimable 285784\nslab 683920\n\
         workingset_refault_anon 0\nworkingset_refault_file 0\nworkingset_activate_anon 0\n\
         workingset_activate_file 0\nworkingset_restore_anon 0\nworkingset_restore_file 0\n\
         workingset_nodereclaim 0\npgscan 0\npgsteal 0\npgscan_kswapd 0\npgscan_direct 0\n\
         pgscan_khugepaged 0\npgsteal_kswapd 0\npgsteal_direct 0\npgsteal_khugepaged 0\n\
         pgfault 1231\npgmajfault 24\npgrefill 0\npgactivate 0\npgdeactivate 0\npglazyfree 0\n\
         pglazyfreed 0\nzswpin 0\nzswpout 0\nzswpwb 0\nthp_fault_alloc 0\nthp_collapse_alloc 0\n\
         thp_swpout 0\nthp_swpout_fallback 0\n",
        s.inactive_file_bytes
    )
}

/// v1 `memory.stat`: the cgroup's own counters, then the hierarchical `total_` ones. `inactive_file`
/// (own) deliberately differs from `total_inactive_file`, so reading the wrong key shows.
pub fn v1_memory_stat(s: &Sample) -> String {
    let cache = s.inactive_file_bytes + 4096;
    let rss = s.memory_bytes.saturating_sub(cache);
    let own_inactive = s.inactive_file_bytes / 2;
    format!(
        "cache {cache}\nrss {rss}\nrss_huge 0\nshmem 0\nmapped_file 1347584\ndirty 0\nwriteback 0\n\
         workingset_refault_anon 0\nworkingset_refault_file 0\nswap 0\nswapcached 0\npgpgin 1259\n\
         pgpgout 852\npgfault 1231\npgmajfault 24\ninactive_anon 57344\nactive_anon 4096\n\
         inactive_file {own_inactive}\nactive_file 0\nunevictable 0\n\
         hierarchical_memory_limit 67108864\nhierarchical_memsw_limit 134217728\n\
         total_cache {cache}\ntotal_rss {rss}\ntotal_rss_huge 0\ntotal_shmem 0\n\
         total_mapped_file 1347584\ntotal_dirty 0\ntotal_writeback 0\n\
         total_workingset_refault_anon 0\ntotal_workingset_refault_file 0\ntotal_swap 0\n\
         total_swapcached 0\ntotal_pgpgin 1259\ntotal_pgpgout 852\ntotal_pgfault 1231\n\
         total_pgmajfault 24\ntotal_inactive_anon 57344\ntotal_active_anon 4096\n\
         total_inactive_file {}\ntotal_active_file 4096\ntotal_unevictable 0\n",
        s.inactive_file_bytes
    )
}

/// A 64-hex-digit container id for container number `n`, as Docker makes them.
pub fn container_id(n: u64) -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        n,
        n ^ 0xdead_beef,
        n * 31,
        !n
    )
}

/// A 32-hex-digit ECS task id (the current ARN format's) for task number `n`.
pub fn task_id(n: u64) -> String {
    format!("{:016x}{:016x}", n ^ 0x5eed, n * 977)
}

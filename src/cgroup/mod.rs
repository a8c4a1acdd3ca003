//! What containers actually use, read from the cgroup filesystem: CPU time, memory, CPU throttling.
//!
//! Pure reads over a path. The hierarchy (v1, v2 or hybrid) is detected once from the cgroup root
//! (`host.cgroup_root`, ECS_CGROUP_PATH, default `/sys/fs/cgroup`) into [`Hierarchy`]; every read
//! dispatches on it. A container's cgroup is located once ([`Cgroups::container`]) and then read as
//! often as wanted ([`ContainerCgroup::read`]). A container that exits mid-read is normal: the files
//! that vanished give `None` for their fields, never an error.
//!
//! Layouts located, in this order (relative to the root, or to each v1 controller's mount):
//!
//! | who | cgroup v1 | cgroup v2 |
//! |---|---|---|
//! | ECS agent task cgroups | `ecs/<task-id>/<container-id>` | `ecstasks.slice/ecstasks-<task-id>.slice/docker-<container-id>.scope` |
//! | Docker, cgroupfs driver | `docker/<container-id>` | `docker/<container-id>` |
//! | Docker, systemd driver | `system.slice/docker-<container-id>.scope` | `system.slice/docker-<container-id>.scope` |
//!
//! The ECS rows are the agent's own `Task.BuildCgroupRoot` (aws/amazon-ecs-agent
//! `agent/api/task/task_linux.go`): v1 is `filepath.Join("/ecs", taskID)`, v2 is
//! `ecstasks-<taskID>.slice` under the systemd driver, whose `-` nests it in `ecstasks.slice`, with the
//! containers below as `docker-<id>.scope` (the tree drawn in that file's `buildCgroupV2Root` comment).
//! The agent only sets that cgroup parent when task CPU/memory limits are on
//! (ECS_ENABLE_TASK_CPU_MEM_LIMIT, default on); otherwise the task's containers sit where Docker's
//! cgroup driver puts them, so the Docker layouts are tried next for ECS containers too.

mod read;

#[cfg(test)]
#[path = "fixture.rs"]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cgroup root {}: {source}", root.display())]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cgroup root {} holds neither a cgroup v2 hierarchy (cgroup.controllers) nor cgroup v1 \
         controllers (cpu, cpuacct, memory); set host.cgroup_root (ECS_CGROUP_PATH) to where the cgroup \
         filesystem is mounted",
        root.display()
    )]
    Unrecognised { root: PathBuf },
}

/// The v1 controller directories this module reads, each `None` when that controller is not mounted.
/// `cpu` and `cpuacct` are the same directory where they are co-mounted (`cpu,cpuacct`, as on
/// Amazon Linux 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct V1Controllers {
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub memory: Option<PathBuf>,
}

/// How the cgroup filesystem is mounted, decided once by [`Cgroups::detect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum Hierarchy {
    /// Controllers mounted one hierarchy each under the root (`cpu/`, `cpuacct/`, `memory/`, …).
    V1 { controllers: V1Controllers },
    /// One unified hierarchy at the root (`cgroup.controllers` in the root).
    V2 { root: PathBuf },
    /// v1 controllers plus a unified hierarchy at `<root>/unified` that holds no controllers the v1
    /// side has (systemd's "hybrid" mode). Usage comes from the v1 controllers; the unified side's
    /// `cpu.stat` (always there in v2) is the fallback for CPU time.
    Hybrid {
        controllers: V1Controllers,
        unified: PathBuf,
    },
}

impl Hierarchy {
    pub fn name(&self) -> &'static str {
        match self {
            Hierarchy::V1 { .. } => "v1",
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::Hybrid { .. } => "hybrid",
        }
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which layout a container's cgroup was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Under the ECS agent's task cgroup (`ecs/<task>/…` or `ecstasks.slice/…`).
    EcsTask,
    /// Docker's cgroupfs driver (`docker/<id>`).
    DockerCgroupfs,
    /// Docker's systemd driver (`system.slice/docker-<id>.scope`).
    DockerSystemd,
}

/// The detected cgroup filesystem. Cheap to clone; holds only paths.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
    hierarchy: Hierarchy,
}

impl Cgroups {
    /// Detects the hierarchy under `root`: v2 when the root holds `cgroup.controllers`; otherwise v1
    /// controllers in subdirectories (`cpu`, `cpuacct`, `memory`, or co-mounted `cpu,cpuacct`), hybrid
    /// when `unified/cgroup.controllers` is there too. Files rather than statfs magic, so a fixture tree
    /// in a temp dir is detected exactly like `/sys/fs/cgroup`.
    pub fn detect(root: &Path) -> Result<Cgroups, Error> {
        let meta = std::fs::metadata(root).map_err(|source| Error::Root {
            root: root.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(Error::Root {
                root: root.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let hierarchy = if root.join("cgroup.controllers").is_file() {
            Hierarchy::V2 {
                root: root.to_owned(),
            }
        } else {
            let first = |names: &[&str]| names.iter().map(|n| root.join(n)).find(|p| p.is_dir());
            let controllers = V1Controllers {
                cpu: first(&["cpu", "cpu,cpuacct", "cpuacct,cpu"]),
                cpuacct: first(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]),
                memory: first(&["memory"]),
            };
            if controllers.cpu.is_none()
                && controllers.cpuacct.is_none()
                && controllers.memory.is_none()
            {
                return Err(Error::Unrecognised {
                    root: root.to_owned(),
                });
            }
            let unified = root.join("unified");
            if unified.join("cgroup.controllers").is_file() {
                Hierarchy::Hybrid {
                    controllers,
                    unified,
                }
            } else {
                Hierarchy::V1 { controllers }
            }
        };
        Ok(Cgroups {
            root: root.to_owned(),
            hierarchy,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// Finds a container's cgroup, trying the ECS task layout first when `task_id` is given (see
    /// [`crate::host::tasks::task_id`]), then Docker's cgroupfs and systemd layouts, then any ECS task cgroup
    /// holding the container (for a task id that is unknown or does not match). `None` when the
    /// container has no cgroup here (not started yet, or gone).
    pub fn container(&self, container_id: &str, task_id: Option<&str>) -> Option<ContainerCgroup> {
        if !is_path_segment(container_id) || task_id.is_some_and(|t| !is_path_segment(t)) {
            return None;
        }
        let (rel, layout) = self.locate(container_id, task_id)?;
        Some(ContainerCgroup::new(&self.hierarchy, &rel, layout))
    }

    fn locate(&self, id: &str, task_id: Option<&str>) -> Option<(PathBuf, Layout)> {
        let v2 = matches!(self.hierarchy, Hierarchy::V2 { .. });
        // The directory whose children are probed: the v2 root, or one mounted v1 controller (the
        // container's cgroup has the same relative path in every v1 controller).
        let base: &Path = match &self.hierarchy {
            Hierarchy::V2 { root } => root,
            Hierarchy::V1 { controllers } | Hierarchy::Hybrid { controllers, .. } => controllers
                .cpuacct
                .as_deref()
                .or(controllers.cpu.as_deref())
                .or(controllers.memory.as_deref())?,
        };
        let ecs_task = |task: &str| -> PathBuf {
            if v2 {
                format!("ecstasks.slice/ecstasks-{task}.slice/docker-{id}.scope").into()
            } else {
                format!("ecs/{task}/{id}").into()
            }
        };
        let mut candidates: Vec<(PathBuf, Layout)> = Vec::with_capacity(3);
        if let Some(task) = task_id {
            candidates.push((ecs_task(task), Layout::EcsTask));
        }
        candidates.push((format!("docker/{id}").into(), Layout::DockerCgroupfs));
        candidates.push((
            format!("system.slice/docker-{id}.scope").into(),
            Layout::DockerSystemd,
        ));
        if let Some(found) = candidates
            .into_iter()
            .find(|(rel, _)| base.join(rel).is_dir())
        {
            return Some(found);
        }
        // Last resort: scan the ECS task cgroups for this container.
        let (parent, leaf) = if v2 {
            ("ecstasks.slice", format!("docker-{id}.scope"))
        } else {
            ("ecs", id.to_owned())
        };
        let tasks = std::fs::read_dir(base.join(parent)).ok()?;
        tasks.flatten().find_map(|task| {
            let rel = Path::new(parent).join(task.file_name()).join(&leaf);
            base.join(&rel).is_dir().then_some((rel, Layout::EcsTask))
        })
    }
}

/// A container id or task id is one path segment: never `..`, never a `/`. Guards the joins above
/// against ids that came from outside the process.
fn is_path_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// One container's located cgroup: the files to read, resolved once.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    layout: Layout,
    dir: PathBuf,
    files: Files,
}

#[derive(Debug, Clone)]
enum Files {
    V1 {
        /// `cpuacct.usage`, nanoseconds.
        cpuacct_usage: Option<PathBuf>,
        /// `cpu.stat`: nr_periods, nr_throttled, throttled_time (ns).
        cpu_stat: Option<PathBuf>,
        memory_usage: Option<PathBuf>,
        memory_stat: Option<PathBuf>,
        /// Hybrid only: the unified side's `cpu.stat` (usage_usec), when cpuacct gives nothing.
        unified_cpu_stat: Option<PathBuf>,
    },
    V2 {
        cpu_stat: PathBuf,
        memory_current: PathBuf,
        memory_stat: PathBuf,
    },
}

impl ContainerCgroup {
    fn new(hierarchy: &Hierarchy, rel: &Path, layout: Layout) -> ContainerCgroup {
        let under =
            |dir: &Option<PathBuf>, file: &str| dir.as_ref().map(|d| d.join(rel).join(file));
        let (dir, files) = match hierarchy {
            Hierarchy::V2 { root } => {
                let dir = root.join(rel);
                let files = Files::V2 {
                    cpu_stat: dir.join("cpu.stat"),
                    memory_current: dir.join("memory.current"),
                    memory_stat: dir.join("memory.stat"),
                };
                (dir, files)
            }
            Hierarchy::V1 { controllers } | Hierarchy::Hybrid { controllers, .. } => {
                let unified = match hierarchy {
                    Hierarchy::Hybrid { unified, .. } => Some(unified.join(rel).join("cpu.stat")),
                    _ => None,
                };
                let dir = controllers
                    .cpuacct
                    .as_ref()
                    .or(controllers.cpu.as_ref())
                    .or(controllers.memory.as_ref())
                    .map(|d| d.join(rel))
                    .unwrap_or_else(|| rel.to_owned());
                let files = Files::V1 {
                    cpuacct_usage: under(&controllers.cpuacct, "cpuacct.usage"),
                    cpu_stat: under(&controllers.cpu, "cpu.stat"),
                    memory_usage: under(&controllers.memory, "memory.usage_in_bytes"),
                    memory_stat: under(&controllers.memory, "memory.stat"),
                    unified_cpu_stat: unified,
                };
                (dir, files)
            }
        };
        ContainerCgroup { layout, dir, files }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The container's cgroup directory (in the cpuacct controller on v1), for logs and `status`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the container's current usage. Never fails: a field whose file vanished (the container
    /// exited) or held garbage is `None`; garbage is logged at debug level with the file's path.
    pub fn read(&self) -> Usage {
        self.read_observed(|_| {})
    }

    /// `read`, calling `before` with each file's path just before it is opened (tests use it to make
    /// a file vanish mid-read).
    fn read_observed(&self, mut before: impl FnMut(&Path)) -> Usage {
        let mut buf = Vec::with_capacity(4096);
        let mut usage = Usage::default();
        match &self.files {
            Files::V2 {
                cpu_stat,
                memory_current,
                memory_stat,
            } => {
                before(cpu_stat);
                if let Some(text) = read::file(cpu_stat, &mut buf) {
                    let [usage_usec, periods, throttled, throttled_usec] = read::keyed(
                        cpu_stat,
                        text,
                        ["usage_usec", "nr_periods", "nr_throttled", "throttled_usec"],
                    );
                    usage.cpu_usage_usec = usage_usec;
                    usage.cpu_nr_periods = periods;
                    usage.cpu_nr_throttled = throttled;
                    usage.cpu_throttled_usec = throttled_usec;
                }
                before(memory_current);
                usage.memory_current_bytes = read::single(memory_current, &mut buf);
                before(memory_stat);
                usage.memory_working_set_bytes = working_set(
                    usage.memory_current_bytes,
                    memory_stat,
                    "inactive_file",
                    &mut buf,
                );
            }
            Files::V1 {
                cpuacct_usage,
                cpu_stat,
                memory_usage,
                memory_stat,
                unified_cpu_stat,
            } => {
                if let Some(path) = cpuacct_usage {
                    before(path);
                    usage.cpu_usage_usec = read::single(path, &mut buf).map(|ns| ns / 1_000);
                }
                if let (None, Some(path)) = (usage.cpu_usage_usec, unified_cpu_stat) {
                    before(path);
                    if let Some(text) = read::file(path, &mut buf) {
                        let [usage_usec] = read::keyed(path, text, ["usage_usec"]);
                        usage.cpu_usage_usec = usage_usec;
                    }
                }
                if let Some(path) = cpu_stat {
                    before(path);
                    if let Some(text) = read::file(path, &mut buf) {
                        let [periods, throttled, throttled_ns] = read::keyed(
                            path,
                            text,
                            ["nr_periods", "nr_throttled", "throttled_time"],
                        );
                        usage.cpu_nr_periods = periods;
                        usage.cpu_nr_throttled = throttled;
                        usage.cpu_throttled_usec = throttled_ns.map(|ns| ns / 1_000);
                    }
                }
                if let Some(path) = memory_usage {
                    before(path);
                    usage.memory_current_bytes = read::single(path, &mut buf);
                }
                if let Some(path) = memory_stat {
                    before(path);
                    // total_inactive_file, not inactive_file: v1's usage_in_bytes counts the
                    // cgroup's descendants too, and only the total_ keys do.
                    usage.memory_working_set_bytes = working_set(
                        usage.memory_current_bytes,
                        path,
                        "total_inactive_file",
                        &mut buf,
                    );
                }
            }
        }
        usage
    }
}

/// Working set = usage − inactive file cache, floored at 0: the memory the kernel cannot simply drop
/// under pressure. Exactly cAdvisor's `setMemoryStats` (google/cadvisor
/// `container/libcontainer/handler.go`), which the kubelet's eviction and `kubectl top` use, except
/// that an unreadable `memory.stat` gives `None` here rather than the raw usage.
fn working_set(
    current: Option<u64>,
    memory_stat: &Path,
    inactive_key: &str,
    buf: &mut Vec<u8>,
) -> Option<u64> {
    let current = current?;
    let text = read::file(memory_stat, buf)?;
    let [inactive] = read::keyed(memory_stat, text, [inactive_key]);
    Some(current.saturating_sub(inactive?))
}

/// One container's (or a sum's) usage at one instant. Every field is `None` when its file could not
/// be read (vanished, unparsable, or the controller is not enabled for that cgroup).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// CPU time consumed since the cgroup was created (v2 `cpu.stat usage_usec`; v1 `cpuacct.usage`
    /// nanoseconds / 1000).
    pub cpu_usage_usec: Option<u64>,
    /// Memory charged to the cgroup, page cache included (v2 `memory.current`; v1
    /// `memory.usage_in_bytes`).
    pub memory_current_bytes: Option<u64>,
    /// `memory_current_bytes` − inactive file cache (v2 `memory.stat inactive_file`; v1 `memory.stat
    /// total_inactive_file`), floored at 0, as cAdvisor and the kubelet compute it.
    pub memory_working_set_bytes: Option<u64>,
    /// CFS enforcement periods elapsed (only counted while a CPU quota is set).
    pub cpu_nr_periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub cpu_nr_throttled: Option<u64>,
    /// Time spent throttled (v2 `throttled_usec`; v1 `throttled_time` nanoseconds / 1000).
    pub cpu_throttled_usec: Option<u64>,
}

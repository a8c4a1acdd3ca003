//! The drain's state on disk: `<state_dir>/drain.json`, replaced atomically (write a temp file with a
//! random name, fsync it, rename it over the old one, fsync the directory), so a reader or a restarted
//! daemon sees the old state or the new one, never half of either.
//!
//! Two processes write it: the daemon and the `drain` / `activate` commands. Every read-modify-write
//! holds an exclusive `flock` on `<state_dir>/drain.lock` for its duration (milliseconds), so each
//! step of the machine sees the other process's last write. The lock is never held across an AWS call,
//! and never waited for longer than two seconds: a `drain` command stopped while holding it (^Z)
//! does not wedge the daemon, whose step then goes on without the lock (reported as `Degraded`).
//!
//! Storing the state never stops the drain. A step whose state cannot be written (full disk, a
//! read-only or broken directory, an unusable lock file) still happens: [`Store::update`] returns it
//! as [`Degraded`], keeps it in memory, works from memory until a write succeeds again, and retries
//! the write on every later update. With a [`Health`] attached, the store marks the daemon unhealthy
//! (fault `drain_state`), counts every failed attempt and logs at ERROR (once a minute at most while
//! it keeps failing). A state file that cannot be read as a state (not JSON, wrong shape, values out
//! of bounds, a directory, a symbolic link, a FIFO) is renamed `drain.json.corrupt-<unix time>` with
//! an ERROR naming both paths and why (and fault `drain_state_corrupt` until the process restarts),
//! and the machine starts from ACTIVE.
//!
//! Files are created with `O_NOFOLLOW` (and the temp file with `O_EXCL`), mode 0600, in a directory
//! created 0700; an existing directory that others can read is tightened to 0700, one that others
//! can write or another user owns is reported unhealthy (fault `state_dir`) and used as it is.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};

use super::machine::{Hook, Lifecycle, MAX_GLOBAL_TIMEOUT, Phase, State};
use crate::health::Health;

const STATE_FILE: &str = "drain.json";
const LOCK_FILE: &str = "drain.lock";
const VERSION: u32 = 1;
/// The state is a few KB; a larger file is not one this daemon wrote.
const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;
/// A time in a state file after this (2200-01-01 UTC) is not one this agent wrote: such a file is
/// set aside like any other corrupt one. (Serde reads no time before 1970; an early time is a clock
/// that was wrong when it was written, and harmless.)
const LATEST: Duration = Duration::from_secs(7_258_118_400);
/// The fault names on [`Health`].
const FAULT_STATE: &str = "drain_state";
const FAULT_DIR: &str = "state_dir";
/// Set when a corrupt state file was moved aside; stays until the process restarts, so that
/// someone looks at what was set aside.
const FAULT_CORRUPT: &str = "drain_state_corrupt";
/// How long an update waits for another process's lock before it goes on without it, and how
/// often it tries meanwhile. A step holds the lock for milliseconds.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_POLL: Duration = Duration::from_millis(10);
/// While writes keep failing, the ERROR line repeats at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state directory {path} {why}")]
    Insecure { path: PathBuf, why: String },
    #[error("state directory {path} is not writable (write test failed): {source}")]
    Probe {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is locked by another process (a `drain` or `activate` command?) for more than {}s: going on without the lock", waited.as_secs())]
    LockHeld { path: PathBuf, waited: Duration },
    #[error("cannot read drain state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drain state {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    /// A directory, a FIFO, a symbolic link…: moved aside like a corrupt file by an update.
    #[error("drain state {path} is not a regular file: it is {what}")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("cannot move the corrupt drain state {path} aside to {aside}: {source}")]
    SetAside {
        path: PathBuf,
        aside: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write drain state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A step that happened in memory although the disk did not fully follow: `error` says what could
/// not be done (the state not written, or written without the lock). The caller acts on `value`
/// as on a stored step; the store keeps the state and writes it on a later update.
#[derive(Debug)]
pub struct Degraded<T> {
    pub value: T,
    pub error: StateError,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    updated_at: SystemTime,
    state: State,
}

/// What this process knows beyond the file.
#[derive(Debug, Default)]
struct Memory {
    /// The state after this process's last update (or read).
    last: Option<State>,
    /// `last` is newer than the file: the file could not be written (or read). Updates start from
    /// `last` and write it until a write succeeds.
    unsaved: bool,
    /// Writes are failing: since when the ERROR was last logged.
    failing_logged: Option<Instant>,
}

/// The drain state under a state directory. Clones share what is kept in memory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    memory: Arc<Mutex<Memory>>,
    health: Option<Arc<Health>>,
}

impl Store {
    /// A store under `dir`, touching nothing on disk yet (see [`Store::prepare`]).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: dir.into(),
            memory: Arc::default(),
            health: None,
        }
    }

    /// [`Store::new`] and [`Store::prepare`]: for the commands, which stop when the state cannot be
    /// stored.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StateError> {
        let store = Store::new(dir);
        store.prepare()?;
        Ok(store)
    }

    /// Reports faults and failed writes to `health` (see the module documentation).
    pub fn with_health(mut self, health: Arc<Health>) -> Store {
        self.health = Some(health);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Creates the directory (0700) when missing, tightens or reports its mode, and tests that a file
    /// can be created, synced and removed in it. A directory open to others is logged and reported
    /// to the attached health but not an error: the files in it are private and follow no link. A
    /// failure is also reported to the attached health, and the next update writes the state again
    /// to find out when the directory works.
    pub fn prepare(&self) -> Result<(), StateError> {
        let dir_check = self.secure_dir();
        if let Err(e @ StateError::Insecure { .. }) = &dir_check {
            tracing::error!(error = %e, "the drain state directory is open to others; using it all the same");
        }
        if let Some(health) = &self.health {
            match &dir_check {
                Err(e @ StateError::Insecure { .. }) => health.fault(FAULT_DIR, e.to_string()),
                _ => {
                    health.clear_fault(FAULT_DIR);
                }
            }
        }
        let checked = match dir_check {
            Err(StateError::Insecure { .. }) | Ok(()) => self.probe(),
            Err(e) => Err(e),
        };
        if let Err(e) = &checked {
            let mut memory = self.memory();
            if let Ok(state) = read(&self.path()) {
                memory.last = Some(state.unwrap_or_default());
                memory.unsaved = true;
            }
            self.report_failure(&mut memory, e);
        }
        checked
    }

    fn secure_dir(&self) -> Result<(), StateError> {
        let dir = &self.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        let meta = std::fs::metadata(dir).map_err(|source| StateError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        let insecure = |why: String| StateError::Insecure {
            path: dir.clone(),
            why,
        };
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(insecure(format!(
                "belongs to uid {}, not to this process's user",
                meta.uid()
            )));
        }
        if mode & 0o022 != 0 {
            return Err(insecure(format!(
                "has mode {mode:04o}: others can write in it (it should be 0700)"
            )));
        }
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o077)).map_err(
                |e| insecure(format!("has mode {mode:04o} and cannot be made 0700: {e}")),
            )?;
            tracing::warn!(path = %dir.display(), mode = format!("{mode:04o}"),
                "the drain state directory was readable by others: made it 0700");
        }
        Ok(())
    }

    /// Creates, syncs and removes a probe file.
    fn probe(&self) -> Result<(), StateError> {
        let err = |source| StateError::Probe {
            path: self.dir.clone(),
            source,
        };
        let (mut file, path) = create_temp(&self.dir, ".probe").map_err(err)?;
        let written = file.write_all(b"probe\n").and_then(|()| file.sync_all());
        drop(file);
        let removed = std::fs::remove_file(&path);
        written.and(removed).map_err(err)
    }

    /// The state as last written; the default (ACTIVE, nothing seen) when there is none yet. When
    /// this process holds a newer state than the file (a write failed), that state. Read-only: a
    /// corrupt file is an error here, and stays where it is.
    pub fn load(&self) -> Result<State, StateError> {
        let memory = self.memory();
        if memory.unsaved {
            return Ok(memory.last.clone().unwrap_or_default());
        }
        drop(memory);
        Ok(read(&self.path())?.unwrap_or_default())
    }

    /// The state as best known, never failing: [`Store::load`], else this process's last state,
    /// else the default.
    pub fn current(&self) -> State {
        self.load()
            .unwrap_or_else(|_| self.memory().last.clone().unwrap_or_default())
    }

    /// Whether this process holds a state the file does not have yet.
    pub fn unsaved(&self) -> bool {
        self.memory().unsaved
    }

    /// Reads, applies `f`, and writes the result when it changed (or a previous write failed), all
    /// under the lock. A state that cannot be read is moved aside (see the module documentation).
    /// `Err(Degraded)` carries `f`'s result all the same: the step happened, in memory.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, Degraded<T>> {
        let (lock, mut problem) = match self.lock() {
            Ok(lock) => (Some(lock), None),
            Err(e) => (None, Some(e)),
        };
        let mut memory = self.memory();
        let path = self.path();
        let base = if memory.unsaved {
            memory.last.clone().unwrap_or_default()
        } else {
            match self.read_or_set_aside(&memory) {
                Ok(state) => state,
                Err(e) => {
                    problem.get_or_insert(e);
                    memory.unsaved = true;
                    memory.last.clone().unwrap_or_default()
                }
            }
        };
        let mut state = base.clone();
        let value = f(&mut state);
        if state != base || memory.unsaved {
            match write_atomic(&self.dir, &path, &state) {
                Ok(()) => memory.unsaved = false,
                Err(e) => {
                    memory.unsaved = true;
                    problem = Some(e);
                }
            }
        }
        memory.last = Some(state);
        drop(lock);
        match problem {
            None => {
                self.report_success(&mut memory);
                Ok(value)
            }
            Some(error) => {
                self.report_failure(&mut memory, &error);
                Err(Degraded { value, error })
            }
        }
    }

    /// The file's state; a corrupt file is renamed and this process's last state (or the default)
    /// taken instead.
    fn read_or_set_aside(&self, memory: &Memory) -> Result<State, StateError> {
        match read(&self.path()) {
            Ok(state) => Ok(state.unwrap_or_default()),
            Err(e @ (StateError::Parse { .. } | StateError::NotAFile { .. })) => {
                let (path, message) = match e {
                    StateError::Parse { path, message } => (path, message),
                    StateError::NotAFile { path, what } => (path, format!("it is {what}")),
                    _ => unreachable!("matched above"),
                };
                let aside = aside_path(&path);
                if let Err(source) = std::fs::rename(&path, &aside) {
                    return Err(StateError::SetAside {
                        path,
                        aside,
                        source,
                    });
                }
                let _ = File::open(&self.dir).and_then(|d| d.sync_all());
                let from = if memory.last.is_some() {
                    "this process's last state"
                } else {
                    "ACTIVE"
                };
                tracing::error!(path = %path.display(), aside = %aside.display(), why = %message,
                    "the drain state file is corrupt: moved it aside, going on from {from}");
                if let Some(health) = &self.health {
                    health.error("drain_state_corrupt");
                    health.fault(
                        FAULT_CORRUPT,
                        format!(
                            "{} was not a drain state ({message}): moved aside to {}, went on from {from}",
                            path.display(),
                            aside.display()
                        ),
                    );
                }
                Ok(memory.last.clone().unwrap_or_default())
            }
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> Result<Flock<File>, StateError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
            .open(&path)
            .map_err(|source| StateError::Lock {
                path: path.clone(),
                source,
            })?;
        // Never wait for good: a `drain` command stopped (^Z) while it holds the lock would wedge
        // the runner. After LOCK_WAIT the update goes on without the lock (`Degraded`).
        let deadline = Instant::now() + LOCK_WAIT;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(LOCK_POLL);
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(StateError::LockHeld {
                        path,
                        waited: LOCK_WAIT,
                    });
                }
                Err((_, errno)) => {
                    return Err(StateError::Lock {
                        path,
                        source: errno.into(),
                    });
                }
            }
        }
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report_failure(&self, memory: &mut Memory, error: &StateError) {
        let Some(health) = &self.health else {
            return;
        };
        health.state_write_error();
        health.fault(
            FAULT_STATE,
            format!("{error}; the drain goes on from memory"),
        );
        let due = memory
            .failing_logged
            .is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            memory.failing_logged = Some(Instant::now());
            tracing::error!(error = %error,
                "cannot store the drain state: acting on it from memory and trying again at every step");
        }
    }

    fn report_success(&self, memory: &mut Memory) {
        let Some(health) = &self.health else {
            return;
        };
        let was_failing = memory.failing_logged.take().is_some();
        let was_faulty = health.clear_fault(FAULT_STATE);
        if was_failing || was_faulty {
            tracing::info!(path = %self.path().display(), "the drain state is stored again");
        }
    }
}

/// `drain.json.corrupt-<unix seconds>`, with `-N` added when that name is taken.
fn aside_path(path: &Path) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.corrupt-{secs}", path.display());
    (0..)
        .map(|n| match n {
            0 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}-{n}")),
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("an unused name")
}

/// The state in `path`; `None` when there is no file. `NotAFile` for anything but a regular file
/// (a symbolic link included), `Parse` for a file that is not a state this build wrote: too large,
/// not UTF-8 JSON of the right shape, values out of bounds.
fn read(path: &Path) -> Result<Option<State>, StateError> {
    let parse = |message: String| StateError::Parse {
        path: path.into(),
        message,
    };
    let read_err = |source| StateError::Read {
        path: path.into(),
        source,
    };
    // O_NONBLOCK: a FIFO planted here must not hang the reader.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_NONBLOCK.bits() | OFlag::O_CLOEXEC.bits())
        .open(path);
    let not_a_file = |what| StateError::NotAFile {
        path: path.into(),
        what,
    };
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(not_a_file("a symbolic link"));
        }
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(not_a_file(if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device"
        }));
    }
    let too_large = || parse(format!("larger than {MAX_STATE_BYTES} bytes"));
    if meta.len() > MAX_STATE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The file may grow between the stat and the read: read one byte past the cap to notice.
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(too_large());
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        parse(format!(
            "not UTF-8 text (invalid byte sequence at byte {})",
            e.valid_up_to()
        ))
    })?;
    let disk: OnDisk = serde_json::from_str(text).map_err(|e| parse(e.to_string()))?;
    if disk.version != VERSION {
        return Err(parse(format!(
            "version {} (this build reads {VERSION})",
            disk.version
        )));
    }
    validate(&disk.state).map_err(parse)?;
    Ok(Some(disk.state))
}

/// Every time before 2200 and every heartbeat timeout within Auto Scaling's global
/// timeout, so the machine's time arithmetic on a loaded state cannot overflow.
pub fn validate(state: &State) -> Result<(), String> {
    let time = |what: &str, t: &SystemTime| match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d <= LATEST => Ok(()),
        Ok(d) => Err(format!(
            "{what} is {} s after 1970, after the year 2200",
            d.as_secs()
        )),
        Err(_) => Err(format!("{what} is before 1970")),
    };
    let hook = |h: &Hook| {
        if h.heartbeat_timeout > MAX_GLOBAL_TIMEOUT {
            Err(format!(
                "the heartbeat timeout of hook {} is {} s (at most {} s)",
                h.name,
                h.heartbeat_timeout.as_secs(),
                MAX_GLOBAL_TIMEOUT.as_secs()
            ))
        } else {
            Ok(())
        }
    };
    for (id, e) in &state.scheduled {
        time(&format!("scheduled {id} not_before"), &e.not_before)?;
        time(&format!("scheduled {id} drain_at"), &e.drain_at)?;
    }
    let (drain, at) = match &state.phase {
        Phase::Active => return Ok(()),
        Phase::Draining(d) => (d, None),
        Phase::Drained { drain, at, .. } | Phase::Failed { drain, at, .. } => (drain, Some(at)),
    };
    if let Some(at) = at {
        time("the drain's end", at)?;
    }
    time("the drain's start", &drain.since)?;
    if let Some(d) = &drain.deadline {
        time("the drain's deadline", d)?;
    }
    match &drain.lifecycle {
        Lifecycle::None | Lifecycle::NoHook => Ok(()),
        Lifecycle::Finding { seen_at } => time("the lifecycle action's time", seen_at),
        Lifecycle::Pending {
            hook: h,
            seen_at,
            last_heartbeat,
        } => {
            hook(h)?;
            time("the lifecycle action's time", seen_at)?;
            time("the last heartbeat", last_heartbeat)
        }
        Lifecycle::Completing {
            hook: h,
            at,
            seen_at,
            ..
        } => {
            hook(h)?;
            time("the completion's time", at)?;
            time("the lifecycle action's time", seen_at)
        }
        Lifecycle::Completed { hook: h, at, .. } | Lifecycle::Uncertain { hook: h, at, .. } => {
            hook(h)?;
            time("the completion's time", at)
        }
    }
}

/// A new file `<dir>/<prefix>.<random>`: `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, so nothing
/// already at that name (a file, a symbolic link) is ever opened.
fn create_temp(dir: &Path, prefix: &str) -> std::io::Result<(File, PathBuf)> {
    let mut last = None;
    for _ in 0..8 {
        let path = dir.join(format!("{prefix}.{:016x}", rand::rng().random::<u64>()));
        match create_new(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temp name")))
}

fn create_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
        .open(path)
}

fn write_atomic(dir: &Path, path: &Path, state: &State) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.into(),
        source,
    };
    let disk = OnDisk {
        version: VERSION,
        updated_at: SystemTime::now(),
        state: state.clone(),
    };
    let text = serde_json::to_vec_pretty(&disk).map_err(|e| err(std::io::Error::other(e)))?;
    let (mut file, tmp) = create_temp(dir, &format!(".{STATE_FILE}.tmp")).map_err(err)?;
    let written = file.write_all(&text).and_then(|()| file.sync_all());
    drop(file);
    // rename() replaces the directory entry: a symbolic link at `path` is replaced, not followed.
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    // The rename is durable once the directory entry is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests;

//! The drain's state on disk: `<state_dir>/drain.json`, replaced atomically (write a temp file, fsync
//! it, rename it over the old one, fsync the directory), so a reader or a restarted daemon sees the
//! old state or the new one, never half of either.
//!
//! Two processes write it: the daemon and the `drain` / `activate` commands. Every read-modify-write
//! holds an exclusive `flock` on `<state_dir>/drain.lock` for its duration (milliseconds), so each
//! step of the machine sees the other process's last write. The lock is never held across an AWS call.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::machine::State;

const STATE_FILE: &str = "drain.json";
const LOCK_FILE: &str = "drain.lock";
const VERSION: u32 = 1;
/// The state is a few KB; a larger file is not one this daemon wrote.
const STATE_FILE_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read drain state {path}: {source}")]
    Read {
        path: PathBuf,
        source: crate::bounded::FileError,
    },
    #[error("drain state {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write drain state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    updated_at: SystemTime,
    state: State,
}

/// The drain state under a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates the directory when missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StateError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| StateError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Store { dir })
    }

    /// The store for reading only: the directory is not created (a missing one reads as no state).
    pub fn existing(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The state as last written; the default (ACTIVE, nothing seen) when there is none yet.
    pub fn load(&self) -> Result<State, StateError> {
        read(&self.path())
    }

    /// Reads, applies `f`, and writes the result when it changed, all under the lock.
    /// A state file that cannot be parsed is moved aside (`drain.json.corrupt-<unix>`) with an error
    /// logged, and the machine starts from the default: the daemon keeps working.
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StateError> {
        let _lock = self.lock()?;
        let path = self.path();
        let mut state = match read(&path) {
            Ok(s) => s,
            Err(StateError::Parse { path, message }) => {
                let aside = path.with_extension(format!(
                    "json.corrupt-{}",
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                tracing::error!(path = %path.display(), aside = %aside.display(), %message,
                    "drain state is corrupt: moved aside, starting from ACTIVE");
                let _ = std::fs::rename(&path, &aside);
                State::default()
            }
            Err(e) => return Err(e),
        };
        let before = state.clone();
        let out = f(&mut state);
        if state != before {
            write_atomic(&self.dir, &path, &state)?;
        }
        Ok(out)
    }

    fn lock(&self) -> Result<Flock<File>, StateError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Lock {
                path: path.clone(),
                source,
            })?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| StateError::Lock {
            path,
            source: errno.into(),
        })
    }
}

fn read(path: &Path) -> Result<State, StateError> {
    let text = match crate::bounded::read_text(path, STATE_FILE_MAX_BYTES) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Ok(State::default()),
        Err(e) if e.is_malformed() => {
            return Err(StateError::Parse {
                path: path.into(),
                message: e.to_string(),
            });
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let disk: OnDisk = serde_json::from_str(&text).map_err(|e| StateError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    if disk.version != VERSION {
        return Err(StateError::Parse {
            path: path.into(),
            message: format!("version {} (this build reads {VERSION})", disk.version),
        });
    }
    Ok(disk.state)
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
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut file = File::create(&tmp).map_err(err)?;
    file.write_all(&text).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable once the directory entry is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::machine::Phase;

    #[test]
    fn missing_state_is_active_and_updates_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("sub")).unwrap();
        assert_eq!(store.load().unwrap(), State::default());
        store
            .update(|s| {
                s.handled.insert("spot:x".into());
            })
            .unwrap();
        let again = Store::open(dir.path().join("sub")).unwrap();
        assert!(again.load().unwrap().handled.contains("spot:x"));
        assert!(!dir.path().join("sub/.drain.json.tmp").exists());
    }

    #[test]
    fn corrupt_state_is_moved_aside_and_reported_by_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(store.path(), "{ not json").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("drain.json"), "{err}");
        let phase = store.update(|s| s.phase.clone()).unwrap();
        assert_eq!(phase, Phase::Active);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside);
    }

    #[test]
    fn concurrent_writers_do_not_lose_updates() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = Store::open(dir.path()).unwrap();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store
                            .update(|s| {
                                s.handled.insert(format!("{t}:{i}"));
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().handled.len(), 100);
    }
}

//! Reads of input that comes from outside the process, each with a size cap: files (regular files
//! only, so a FIFO or a device is refused instead of blocking or reading forever) and HTTP bodies.

use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

/// The configuration file and the ECS agent's `ecs.config`.
pub const CONFIG_FILE_MAX_BYTES: u64 = 1024 * 1024;
/// One AWS CLI JSON document for `cluster` (a 2,000-instance describe-container-instances is ~5 MB).
pub const CLUSTER_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// A body from the ECS agent's introspection API (`/v1/tasks` is ~1 KB per task).
pub const ECS_AGENT_BODY_MAX_BYTES: usize = 8 * 1024 * 1024;
/// A body from IMDS (notices, ids, MAC lists: at most a few KB).
pub const IMDS_BODY_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    #[error("larger than {max} bytes")]
    TooLarge { max: u64 },
    #[error("not UTF-8 text (invalid byte sequence at byte {at})")]
    NotUtf8 { at: usize },
}

impl FileError {
    /// The file is not there (the caller may fall back to defaults).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }

    /// The file is there and readable, but its content is not what any reader accepts (too large,
    /// not text): malformed input rather than missing input.
    pub fn is_malformed(&self) -> bool {
        matches!(self, FileError::TooLarge { .. } | FileError::NotUtf8 { .. })
    }
}

fn kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes nothing
    // for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > max {
        return Err(FileError::TooLarge { max });
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the stat and the read: read one byte past the cap to notice.
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(FileError::TooLarge { max });
    }
    Ok(out)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path, max: u64) -> Result<String, FileError> {
    String::from_utf8(read_file(path, max)?).map_err(|e| FileError::NotUtf8 {
        at: e.utf8_error().valid_up_to(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than {max} bytes")]
    TooLarge { max: usize },
    #[error(transparent)]
    Read(#[from] reqwest::Error),
}

/// A response body, at most `max` bytes; larger bodies are refused as soon as that is known (from
/// Content-Length, or while reading), never buffered whole.
pub async fn body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge { max });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            return Err(BodyError::TooLarge { max });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_device_and_a_directory_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, what) in [
            (fifo.as_path(), "FIFO"),
            (Path::new("/dev/zero"), "character device"),
            (dir.path(), "directory"),
        ] {
            let err = read_file(path, 1024).unwrap_err().to_string();
            assert!(err.contains(what), "{}: {err}", path.display());
        }
    }

    #[test]
    fn a_file_above_the_cap_is_refused_and_one_at_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![b'a'; 11]).unwrap();
        assert!(matches!(
            read_file(&path, 10),
            Err(FileError::TooLarge { max: 10 })
        ));
        assert_eq!(read_file(&path, 11).unwrap().len(), 11);
        std::fs::write(&path, b"ok\xff").unwrap();
        let err = read_text(&path, 10).unwrap_err();
        assert!(
            err.is_malformed() && err.to_string().contains("byte 2"),
            "{err}"
        );
    }
}

//! Reading and parsing the cgroup files: a single number (`memory.current`, `cpuacct.usage`) or
//! flat keyed lines (`cpu.stat`, `memory.stat`: `key value\n`). Never fails: `None` is the answer for
//! a file that is gone (the container exited) or holds something else than expected.

use std::io::{ErrorKind, Read};
use std::path::Path;

/// The file's contents in `buf` (reused between files to save an allocation per read). `None` when
/// it cannot be read: vanished files are normal (trace), anything else is logged at debug.
///
/// Plain `read` calls into the reused buffer until end of file: `read_to_string` would add a statx
/// and an lseek per file for its size hint, a third of the syscalls of a 200-container snapshot.
pub(super) fn file<'b>(path: &Path, buf: &'b mut Vec<u8>) -> Option<&'b str> {
    buf.clear();
    match fill(path, buf) {
        Ok(()) => match std::str::from_utf8(buf) {
            Ok(text) => Some(text),
            Err(_) => {
                tracing::debug!(path = %path.display(), "cgroup file is not text");
                None
            }
        },
        // ENOENT for a removed file; ENODEV (and sometimes ESRCH) for a file of an rmdir'ed cgroup
        // that was still open or being walked when the container exited.
        Err(e) if vanished(&e) => {
            tracing::trace!(path = %path.display(), "cgroup file vanished: {e}");
            None
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), "cannot read cgroup file: {e}");
            None
        }
    }
}

fn fill(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut len = 0;
    loop {
        if buf.len() - len < 512 {
            buf.resize(buf.len().max(2048) * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(())
}

fn vanished(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(code) if code == nix::libc::ENODEV || code == nix::libc::ESRCH
        )
}

/// A file holding one unsigned number and a newline.
pub(super) fn single(path: &Path, buf: &mut Vec<u8>) -> Option<u64> {
    let text = file(path, buf)?;
    let value = text.trim().parse().ok();
    if value.is_none() {
        tracing::debug!(path = %path.display(), content = %excerpt(text), "cgroup file does not hold a number");
    }
    value
}

/// The values of `keys` in a flat keyed file, in the order asked. A key the file does not have is
/// `None` silently (v2's `nr_periods` only appears once the cpu controller is enabled); a key with a
/// value that is not a number is `None` and logged.
pub(super) fn keyed<const N: usize>(path: &Path, text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut out = [None; N];
    let mut left = N;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let Some(i) = keys.iter().position(|k| *k == key) else {
            continue;
        };
        match value.trim().parse() {
            Ok(v) => out[i] = Some(v),
            Err(_) => {
                tracing::debug!(path = %path.display(), line = %excerpt(line), "cgroup file has a malformed value for {key}");
            }
        }
        left -= 1;
        if left == 0 {
            break;
        }
    }
    out
}

/// At most the first 80 characters, for a log line about garbage.
fn excerpt(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

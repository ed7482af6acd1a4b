//! The log file itself: opening it for append and locking it (and, with `EVENT_SYNC=data`,
//! making its directory entry durable), writing a batch without leaving a torn line, syncing
//! it, measuring its volume, and saying what went wrong twice over: in full for the operator,
//! and as a short stable reason for clients, which must not learn the path, the uid or the
//! OS's wording.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::config::EventSync;

/// How a process holds its log file: exclusively when it rotates the file (a file renamed
/// under another writer would carry that writer's records off), shared when it only appends
/// (any number of processes may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    Shared,
    Exclusive,
}

/// Why the log file could not be taken.
#[derive(Debug)]
pub(super) enum TakeError {
    /// Opening or creating it failed.
    Io(io::Error),
    /// Another process holds a lock on it that excludes this one's.
    Held,
}

impl TakeError {
    /// The operator's message: what failed, and what to do.
    pub(super) fn message(&self, path: &Path, hold: Hold) -> String {
        match self {
            TakeError::Io(e) => open_error(path, e),
            TakeError::Held => held_error(path, hold),
        }
    }
}

/// The log file, open for appending and locked.
pub(super) struct Taken {
    pub(super) file: File,
    /// Why it is not locked, where its file system has no locks: it is used all the same.
    pub(super) unlocked: Option<io::Error>,
    /// Its size once opened.
    pub(super) size: u64,
}

/// How long taking the file waits for a lock held by another process: a retention sweep
/// holds one for the moment of a delete, a live writer for good.
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// The directory of `path` (`.` for a bare file name).
pub(super) fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Opens `path` for appending, creating it and its directory if needed, and locks it as
/// `hold` says. With [`EventSync::Data`], the file and its directory are synced (and the
/// parents of any directory created), so that a file created now still exists after a power
/// loss.
pub(super) fn take(path: &Path, sync: EventSync, hold: Hold) -> Result<Taken, TakeError> {
    let dir = parent(path);
    // The directories that do not exist yet: each one's entry lives in its parent.
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir).map_err(TakeError::Io)?;
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(path)
            .map_err(TakeError::Io)?;
        let locked = match hold {
            Hold::Shared => file.try_lock_shared(),
            Hold::Exclusive => file.try_lock(),
        };
        let unlocked = match locked {
            Ok(()) => None,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(TryLockError::WouldBlock) => return Err(TakeError::Held),
            Err(TryLockError::Error(e)) => Some(e),
        };
        // The lock may have been taken on a file that was renamed or deleted between the open
        // and the lock (a rotation or a retention sweep in another process): take the one at
        // the path instead.
        if unlocked.is_none() && !same_file(&file, path) {
            if Instant::now() < deadline {
                continue;
            }
            return Err(TakeError::Io(io::Error::other(
                "the file at this path kept changing while it was being opened",
            )));
        }
        let size = finish_open(&file, path, sync, dir, &missing).map_err(TakeError::Io)?;
        return Ok(Taken {
            file,
            unlocked,
            size,
        });
    }
}

/// Closes a last line cut short, and in data mode makes the file's existence durable.
fn finish_open(
    mut file: &File,
    path: &Path,
    sync: EventSync,
    dir: &Path,
    missing: &[&Path],
) -> io::Result<u64> {
    // A file whose last line was cut short (a crash or power loss mid-write, by an older
    // writer) gets a newline first, so our first record is not glued onto the fragment.
    let meta = file.metadata()?;
    let mut size = meta.len();
    if meta.is_file() && size > 0 {
        let mut last = [0u8; 1];
        let read = File::open(path).and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut last, meta.len() - 1)
        });
        if read.is_ok() && last[0] != b'\n' {
            file.write_all(b"\n")?;
            size += 1;
        }
    }
    if sync == EventSync::Data {
        file.sync_all()?;
        sync_dir(dir)?;
        for created in missing {
            sync_dir(created.parent().unwrap_or(Path::new("/")))?;
        }
    }
    Ok(size)
}

/// Whether `file` is the file at `path` now (not renamed away or deleted since it was opened;
/// `path` may be a link to it).
pub(super) fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Makes the entries of `dir` durable (std has no `fsync` of a path, but a directory opened
/// read-only can be synced).
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// The bytes free to this (unprivileged) process on the volume holding `file`, and the
/// volume's size; `None` where the file system does not say.
pub(super) fn volume(file: &File) -> Option<(u64, u64)> {
    let st = rustix::fs::fstatvfs(file).ok()?;
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    Some((
        st.f_bavail.saturating_mul(unit),
        st.f_blocks.saturating_mul(unit),
    ))
}

/// Marks `file` as written now without writing to it, so that an idle replica's file is not
/// taken for one that nobody writes (`LOG_MAX_AGE`).
pub(super) fn touch(file: &File) -> io::Result<()> {
    file.set_modified(SystemTime::now())
}

/// Writes `buf` with as few `write` calls as the kernel allows (one, unless the disk fills).
/// Returns how many bytes reached the file, and the error that stopped it. A line cut short by
/// a failure is truncated away, so that the file never holds a torn record.
pub(super) fn write_batch(file: &mut File, buf: &[u8]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return cut_torn_line(file, buf, done, io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return cut_torn_line(file, buf, done, e),
        }
    }
    (done, None)
}

fn cut_torn_line(file: &File, buf: &[u8], done: usize, e: io::Error) -> (usize, Option<io::Error>) {
    let whole = buf[..done]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let torn = (done - whole) as u64;
    if torn > 0 {
        // Another process appending in this instant would lose its tail too; a full disk
        // leaves no better choice, and without this the file would hold half a line.
        if let Ok(meta) = file.metadata() {
            let _ = file.set_len(meta.len().saturating_sub(torn));
        }
    }
    (whole, Some(e))
}

/// The reason a client is given when the log cannot be written: short, stable, and free of
/// paths, uids and OS wording (the full error goes to stderr and the log).
pub(super) fn public_reason(e: &io::Error) -> &'static str {
    REASONS[reason(e)].1
}

/// The kinds of write failure, as a metric's label and in a client's words.
pub(super) const REASONS: [(&str, &str); 5] = [
    ("disk_full", "log file not writable: disk full"),
    (
        "permission_denied",
        "log file not writable: permission denied",
    ),
    ("read_only", "log file not writable: read-only file system"),
    ("io_error", "log file not writable: I/O error"),
    ("other", "log file not writable"),
];

/// The index in [`REASONS`] of `e`'s kind.
pub(super) fn reason(e: &io::Error) -> usize {
    // EIO, EDQUOT: no stable ErrorKind for them in std yet.
    const EIO: i32 = 5;
    const EDQUOT: i32 = 122;
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::StorageFull, _) | (_, Some(EDQUOT)) => 0,
        (io::ErrorKind::PermissionDenied, _) => 1,
        (io::ErrorKind::ReadOnlyFilesystem, _) => 2,
        (_, Some(EIO)) => 3,
        _ => 4,
    }
}

/// The uid this process runs as, read from procfs (no libc needed; `/proc/self` belongs to it).
fn current_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The operator's message for a log file that cannot be opened: the path, the uid, the
/// cause and what to do.
fn open_error(path: &Path, e: &io::Error) -> String {
    let uid = current_uid().map_or_else(|| "unknown".to_string(), |u| u.to_string());
    let dir = parent(path);
    // Absolute, so that inside a container it reads `/app/logs`, the mount point.
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!(
            "make {} writable by uid {uid} (if it is a mounted host directory, on the host: `sudo chown {uid} <that directory>`; or run `api --prepare-logs {uid}:{uid}` as root, as compose's log-init does), or set LOG_FILE to a writable path",
            dir.display(),
        ),
        _ => "check the path, or set LOG_FILE to a writable file".to_string(),
    };
    format!(
        "cannot open log file {} for appending as uid {uid}: {e}; {hint}",
        path.display()
    )
}

/// The operator's message for a log file that another process holds: why one writer is
/// needed, and what to do.
fn held_error(path: &Path, hold: Hold) -> String {
    let why = match hold {
        Hold::Exclusive => {
            "this process rotates it (LOG_MAX_BYTES is set), so it must be the file's only writer"
        }
        Hold::Shared => "that process rotates it (LOG_MAX_BYTES is set there)",
    };
    format!(
        "log file {} is in use by another process: {why}; give each process a file of its own with LOG_FILE=logs/api-{{hostname}}.log, or set LOG_MAX_BYTES=0 in every process that shares the file",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client-facing reasons name the kind of failure and nothing else.
    #[test]
    fn public_reasons_are_short_and_stable() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(public_reason(&os(28)), "log file not writable: disk full");
        assert_eq!(public_reason(&os(122)), "log file not writable: disk full");
        assert_eq!(
            public_reason(&os(13)),
            "log file not writable: permission denied"
        );
        assert_eq!(
            public_reason(&os(1)),
            "log file not writable: permission denied"
        );
        assert_eq!(
            public_reason(&os(30)),
            "log file not writable: read-only file system"
        );
        assert_eq!(public_reason(&os(5)), "log file not writable: I/O error");
        assert_eq!(public_reason(&os(9)), "log file not writable");
        assert_eq!(
            public_reason(&io::ErrorKind::WriteZero.into()),
            "log file not writable"
        );
    }

    /// In data mode a new file is created with its directory (and the directory's own
    /// entry) synced; both modes append to what is there.
    #[test]
    fn open_creates_and_appends_in_both_modes() {
        let root = std::env::temp_dir().join(format!("api-file-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (n, sync) in [EventSync::None, EventSync::Data].into_iter().enumerate() {
            let path = root.join(format!("m{n}/a/b/api.log"));
            let mut f = take(&path, sync, Hold::Shared).unwrap().file;
            assert_eq!(write_batch(&mut f, b"{}\n").0, 3);
            drop(f);
            let mut f = take(&path, sync, Hold::Shared).unwrap().file;
            assert_eq!(write_batch(&mut f, b"{}\n").0, 3);
            assert_eq!(fs::read(&path).unwrap(), b"{}\n{}\n");
        }
        let _ = fs::remove_dir_all(&root);
    }

    /// Shared holders coexist; an exclusive holder excludes every other (within one process
    /// too: locks belong to the open file, not the process).
    #[test]
    fn holds_exclude_as_documented() {
        let root = std::env::temp_dir().join(format!("api-hold-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let path = root.join("api.log");
        let a = take(&path, EventSync::None, Hold::Shared).unwrap();
        let b = take(&path, EventSync::None, Hold::Shared).unwrap();
        assert!(a.unlocked.is_none() && b.unlocked.is_none());
        assert!(matches!(
            take(&path, EventSync::None, Hold::Exclusive),
            Err(TakeError::Held)
        ));
        drop((a, b));
        let x = take(&path, EventSync::None, Hold::Exclusive).unwrap();
        assert!(matches!(
            take(&path, EventSync::None, Hold::Shared),
            Err(TakeError::Held)
        ));
        assert!(same_file(&x.file, &path));
        fs::rename(&path, root.join("moved.log")).unwrap();
        assert!(!same_file(&x.file, &path));
        assert!(volume(&x.file).is_some_and(|(free, total)| total > 0 && free <= total));
        let _ = fs::remove_dir_all(&root);
    }
}

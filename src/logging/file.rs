//! The log file itself: opening it for append (and, with `EVENT_SYNC=data`, making its
//! directory entry durable), writing a batch without leaving a torn line, syncing it, and
//! saying what went wrong twice over: in full for the operator, and as a short stable reason
//! for clients, which must not learn the path, the uid or the OS's wording.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::config::EventSync;

/// Opens `path` for appending, creating it and its directory if needed. With
/// [`EventSync::Data`], the file and its directory are synced (and the parents of any
/// directory created), so that a file created now still exists after a power loss.
pub(super) fn open_append(path: &Path, sync: EventSync) -> io::Result<File> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The directories that do not exist yet: each one's entry lives in its parent.
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir)?;
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    // A file whose last line was cut short (a crash or power loss mid-write, by an older
    // writer) gets a newline first, so our first record is not glued onto the fragment.
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > 0 {
        let mut last = [0u8; 1];
        let read = File::open(path).and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut last, meta.len() - 1)
        });
        if read.is_ok() && last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    if sync == EventSync::Data {
        file.sync_all()?;
        sync_dir(dir)?;
        for created in missing {
            sync_dir(created.parent().unwrap_or(Path::new("/")))?;
        }
    }
    Ok(file)
}

/// Makes the entries of `dir` durable (std has no `fsync` of a path, but a directory opened
/// read-only can be synced).
fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
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
    // EIO, EDQUOT: no stable ErrorKind for them in std yet.
    const EIO: i32 = 5;
    const EDQUOT: i32 = 122;
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::StorageFull, _) | (_, Some(EDQUOT)) => "log file not writable: disk full",
        (io::ErrorKind::PermissionDenied, _) => "log file not writable: permission denied",
        (io::ErrorKind::ReadOnlyFilesystem, _) => "log file not writable: read-only file system",
        (_, Some(EIO)) => "log file not writable: I/O error",
        _ => "log file not writable",
    }
}

/// The uid this process runs as, read from procfs (no libc needed; `/proc/self` belongs to it).
fn current_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The operator's message for a log file that cannot be opened: the path, the uid, the
/// cause and what to do.
pub(super) fn open_error(path: &Path, e: &io::Error) -> String {
    let uid = current_uid().map_or_else(|| "unknown".to_string(), |u| u.to_string());
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
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
            let mut f = open_append(&path, sync).unwrap();
            assert_eq!(write_batch(&mut f, b"{}\n").0, 3);
            drop(f);
            let mut f = open_append(&path, sync).unwrap();
            assert_eq!(write_batch(&mut f, b"{}\n").0, 3);
            assert_eq!(fs::read(&path).unwrap(), b"{}\n{}\n");
        }
        let _ = fs::remove_dir_all(&root);
    }
}

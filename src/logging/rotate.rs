//! Rotation and retention, done by the writer thread between writes: the names of rotated
//! files, moving a full file aside for a new one, and deleting what `LOG_KEEP` and
//! `LOG_MAX_AGE` no longer keep.
//!
//! A rotated file is named `<stem>.<UTC time>.<ext>` (`api-vm.20261202T044419.258123Z.log`):
//! names sort by time, and stay inside the `<stem>*.<ext>` a log shipper watches, so a shipper
//! that lags or is down across a rotation still finds the rest of the file under its new name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use super::file;
use crate::config::{EventSync, HOSTNAME_PLACEHOLDER};

/// Length of the rotation time in a rotated name: `20261202T044419.258123Z`.
const STAMP_LEN: usize = 23;

/// The names of one log file and of its kin in its directory.
pub(super) struct Names {
    dir: PathBuf,
    /// The live file's name (`api-vm.log`), split into stem and extension (`api-vm`, `.log`;
    /// no extension: `""`).
    live: String,
    stem: String,
    ext: String,
    /// The pattern of every replica's stem: `LOG_FILE`'s stem as given, cut at each
    /// `{hostname}` (`["api-", ""]`).
    pattern: Vec<String>,
}

impl Names {
    /// The names of the live file at `path`, whose name was given as `pattern` (`{hostname}`
    /// not replaced).
    pub(super) fn new(path: &Path, pattern: &str) -> Names {
        let live = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The extension is the given name's, after its last dot, if that holds no
        // placeholder (a hostname may contain dots; the given text cannot).
        let ext = match pattern.rfind('.') {
            Some(i) if i > 0 && !pattern[i..].contains(HOSTNAME_PLACEHOLDER) => {
                pattern[i..].to_string()
            }
            _ => String::new(),
        };
        let ext = if live.len() > ext.len() && live.ends_with(&ext) {
            ext
        } else {
            String::new()
        };
        let stem = live[..live.len() - ext.len()].to_string();
        let pattern_stem = pattern.strip_suffix(ext.as_str()).unwrap_or(pattern);
        Names {
            dir: file::parent(path).to_path_buf(),
            pattern: pattern_stem
                .split(HOSTNAME_PLACEHOLDER)
                .map(str::to_string)
                .collect(),
            live,
            stem,
            ext,
        }
    }

    pub(super) fn live_path(&self) -> PathBuf {
        self.dir.join(&self.live)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The rotated name for a rotation at `at`.
    pub(super) fn rotated(&self, at: OffsetDateTime) -> String {
        format!(
            "{}.{:04}{:02}{:02}T{:02}{:02}{:02}.{:06}Z{}",
            self.stem,
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.microsecond(),
            self.ext
        )
    }

    /// Whether `name` is one of this file's rotated names.
    pub(super) fn is_rotated(&self, name: &str) -> bool {
        name.strip_suffix(self.ext.as_str())
            .and_then(|n| n.strip_prefix(self.stem.as_str()))
            .and_then(|n| n.strip_prefix('.'))
            .is_some_and(is_stamp)
    }

    /// Whether `name` is a live or rotated file of any replica: the stem pattern with some
    /// hostname in each placeholder, maybe a rotation time, then the extension.
    pub(super) fn is_kin(&self, name: &str) -> bool {
        let Some(stem) = name.strip_suffix(self.ext.as_str()) else {
            return false;
        };
        if glob(&self.pattern, stem) {
            return true;
        }
        stem.len() > STAMP_LEN + 1
            && stem.is_char_boundary(stem.len() - STAMP_LEN - 1)
            && is_stamp(&stem[stem.len() - STAMP_LEN..])
            && stem[..stem.len() - STAMP_LEN].ends_with('.')
            && glob(&self.pattern, &stem[..stem.len() - STAMP_LEN - 1])
    }
}

/// Whether `s` is a rotation time as [`Names::rotated`] writes it.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == STAMP_LEN
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 => c == b'T',
            15 => c == b'.',
            22 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Whether `s` is `pieces` joined by one or more characters each (a `*` that is never empty).
fn glob(pieces: &[String], s: &str) -> bool {
    match pieces {
        [] => s.is_empty(),
        [only] => s == only,
        [first, rest @ ..] => {
            let Some(mut tail) = s.strip_prefix(first.as_str()) else {
                return false;
            };
            // The wildcard takes at least one character, then the rest must match.
            let mut chars = tail.chars();
            while chars.next().is_some() {
                tail = chars.as_str();
                if glob(rest, tail) {
                    return true;
                }
            }
            false
        }
    }
}

/// What a rotation left behind: the full file's new name, and the new file at the path.
pub(super) struct Rotated {
    pub(super) name: String,
    pub(super) file: File,
}

/// Why a rotation did not happen.
pub(super) enum NotRotated {
    /// Nothing changed: the live file is where it was.
    Failed(io::Error),
    /// The full file was renamed, but in that instant another process created a file at the
    /// path, which keeps it: this process writes on to the full file under its new name.
    PathTaken(String),
}

/// Renames the live file to its rotated name (for a rotation at `at`) and puts a new, empty
/// file, created and locked beforehand, at its path. Each file has one name at every moment,
/// so no record is ever in two files; for the instant between the two renames the path names
/// no file, and the second rename never replaces one that another process made meanwhile.
/// The directory is not synced here.
pub(super) fn rotate(
    names: &Names,
    sync: EventSync,
    at: OffsetDateTime,
) -> Result<Rotated, NotRotated> {
    let live = names.live_path();
    // The new file first, under a name no shipper or sweep matches; one left by a rotation a
    // crash cut short is replaced.
    let fresh = names.path(&format!(".{}.rotating", names.live));
    let _ = fs::remove_file(&fresh);
    let failed = |e: io::Error| {
        let _ = fs::remove_file(&fresh);
        NotRotated::Failed(e)
    };
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o644)
        .open(&fresh)
        .map_err(NotRotated::Failed)?;
    // Nobody else knows this file yet; a file system without locks leaves it unlocked.
    let _ = file.try_lock();
    if sync == EventSync::Data {
        file.sync_all().map_err(failed)?;
    }
    // rename replaces an existing file; only this process, which holds the live file, makes
    // these names (a clock stepped back could repeat one).
    let mut at = at;
    let mut name = names.rotated(at);
    while fs::symlink_metadata(names.path(&name)).is_ok() {
        at += time::Duration::microseconds(1);
        name = names.rotated(at);
    }
    let target = names.path(&name);
    fs::rename(&live, &target).map_err(failed)?;
    match rename_noreplace(&fresh, &live) {
        Ok(()) => Ok(Rotated { name, file }),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&fresh);
            Err(NotRotated::PathTaken(name))
        }
        Err(e) => {
            // Put the full file back, if the path is still free.
            let _ = fs::remove_file(&fresh);
            match rename_noreplace(&target, &live) {
                Ok(()) => Err(NotRotated::Failed(e)),
                Err(_) => Err(NotRotated::PathTaken(name)),
            }
        }
    }
}

/// Renames `from` to `to` unless `to` exists. Where the file system cannot tell
/// (`RENAME_NOREPLACE` unsupported), a plain rename.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP) => {
            fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes what a rotation cut short by a crash can leave: the new file not yet in place.
/// Runs at start, while this process holds the live file.
pub(super) fn repair(names: &Names) {
    let _ = fs::remove_file(names.path(&format!(".{}.rotating", names.live)));
}

/// A file retention deleted, and why.
pub(super) struct Deleted {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    /// `LOG_KEEP` or `LOG_MAX_AGE`.
    pub(super) reason: &'static str,
    /// Time since it was last written.
    pub(super) idle: Duration,
}

/// What one retention pass did and found.
#[derive(Default)]
pub(super) struct Retention {
    pub(super) deleted: Vec<Deleted>,
    /// Files that could not be deleted, and why.
    pub(super) failed: Vec<String>,
    /// This file's rotated files left, and their bytes.
    pub(super) rotated_files: u64,
    pub(super) rotated_bytes: u64,
}

/// Deletes this file's rotated files beyond the newest `keep`, and with `max_age` every file
/// of the pattern, any replica's, not written for longer than that which no process holds
/// locked; never the live file, a directory or a link. Counts the rotated files left.
pub(super) fn retain(names: &Names, keep: Option<usize>, max_age: Option<Duration>) -> Retention {
    let mut r = Retention::default();
    let entries = match fs::read_dir(&names.dir) {
        Ok(entries) => entries,
        Err(e) => {
            r.failed
                .push(format!("cannot list {}: {e}", names.dir.display()));
            return r;
        }
    };
    let mut own = Vec::new();
    let mut others = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == names.live {
            continue;
        }
        let rotated = names.is_rotated(&name);
        if !rotated && (max_age.is_none() || !names.is_kin(&name)) {
            continue;
        }
        // DirEntry::metadata does not follow a link.
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        if rotated {
            own.push((name, meta));
        } else {
            others.push((name, meta));
        }
    }
    own.sort_by(|a, b| a.0.cmp(&b.0));
    let excess = keep.map_or(0, |keep| own.len().saturating_sub(keep));
    let now = SystemTime::now();
    let idle = |m: &fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default()
    };
    for (name, meta) in own.drain(..excess) {
        let path = names.path(&name);
        match fs::remove_file(&path) {
            Ok(()) => r.deleted.push(Deleted {
                idle: idle(&meta),
                path,
                bytes: meta.len(),
                reason: "LOG_KEEP",
            }),
            Err(e) => r
                .failed
                .push(format!("cannot delete {}: {e}", path.display())),
        }
    }
    if let Some(max_age) = max_age {
        let mut kept = Vec::with_capacity(own.len());
        for (name, meta) in own.into_iter().chain(others) {
            if idle(&meta) <= max_age {
                kept.push((name, meta));
                continue;
            }
            let path = names.path(&name);
            match delete_unheld(&path, max_age) {
                Ok(Some((bytes, was_idle))) => r.deleted.push(Deleted {
                    path,
                    bytes,
                    reason: "LOG_MAX_AGE",
                    idle: was_idle,
                }),
                Ok(None) => kept.push((name, meta)),
                Err(e) => {
                    r.failed
                        .push(format!("cannot delete {}: {e}", path.display()));
                    kept.push((name, meta));
                }
            }
        }
        own = kept;
    }
    for (name, meta) in &own {
        if names.is_rotated(name) {
            r.rotated_files += 1;
            r.rotated_bytes += meta.len();
        }
    }
    r
}

/// Deletes the file at `path` if no process holds a lock on it and it has still not been
/// written for `max_age`: its size and idle time then, or `None` if it is in use. The lock is
/// held across the delete, so a process cannot take the file in between.
fn delete_unheld(path: &Path, max_age: Duration) -> io::Result<Option<(u64, Duration)>> {
    // Open for writing: a write lock needs it on file systems that emulate flock (NFS).
    let file = match OpenOptions::new().append(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(None),
        // No locks on this file system: its age is all there is to go by.
        Err(fs::TryLockError::Error(_)) => {}
    }
    let meta = file.metadata()?;
    let idle = meta
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    if idle <= max_age || !file::same_file(&file, path) {
        return Ok(None);
    }
    fs::remove_file(path)?;
    Ok(Some((meta.len(), idle)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"2026-12-02T04:44:19.258123Z"` (always this shape) as a time.
    fn at(s: &str) -> OffsetDateTime {
        let n = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap();
        let micros = if s.len() > 20 { n(20..26) } else { 0 };
        let month = time::Month::try_from(n(5..7) as u8).unwrap();
        let date = time::Date::from_calendar_date(n(0..4) as i32, month, n(8..10) as u8).unwrap();
        let t =
            time::Time::from_hms_micro(n(11..13) as u8, n(14..16) as u8, n(17..19) as u8, micros)
                .unwrap();
        OffsetDateTime::new_utc(date, t)
    }

    /// Rotated names sort by time and stay inside the shipper's `<stem>*<ext>`; kin are any
    /// replica's live or rotated files, and nothing else.
    #[test]
    fn names_sort_and_match() {
        let n = Names::new(Path::new("logs/api-vm.log"), "api-{hostname}.log");
        let a = n.rotated(at("2026-12-02T04:44:19.258123Z"));
        let b = n.rotated(at("2026-12-02T10:00:00Z"));
        assert_eq!(a, "api-vm.20261202T044419.258123Z.log");
        assert!(a < b);
        assert!(n.is_rotated(&a) && n.is_rotated(&b));
        assert!(
            !n.is_rotated("api-vm.log") && !n.is_rotated("api-other.20261202T044419.258123Z.log")
        );
        for kin in [
            "api-vm.log",
            "api-x.y.log",
            "api-gone.20200101T000000.000000Z.log",
            &a,
        ] {
            assert!(n.is_kin(kin), "{kin}");
        }
        for other in [
            "api-.log",
            "api.log",
            "api-vm.log.1",
            "other-vm.log",
            "api-vm.txt",
            ".api-vm.log.rotating",
        ] {
            assert!(!n.is_kin(other), "{other}");
        }
        // Without the placeholder only this file's own names match.
        let one = Names::new(Path::new("api.log"), "api.log");
        assert!(one.is_kin("api.log") && one.is_kin(&one.rotated(at("2026-01-01T00:00:00Z"))));
        assert!(!one.is_kin("api-b.log"));
        // No extension: the stamp ends the name.
        let bare = Names::new(Path::new("/var/log/api-vm"), "api-{hostname}");
        assert_eq!(
            bare.rotated(at("2026-01-01T00:00:00Z")),
            "api-vm.20260101T000000.000000Z"
        );
        assert!(bare.is_kin("api-other"));
        // A hostname with dots does not move the extension.
        let dotted = Names::new(Path::new("api-a.b.log"), "api-{hostname}.log");
        assert!(dotted.is_rotated(&dotted.rotated(at("2026-01-01T00:00:00Z"))));
        assert!(
            dotted
                .rotated(at("2026-01-01T00:00:00Z"))
                .starts_with("api-a.b.2026")
        );
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("api-rot-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn age(path: &Path, by: Duration) {
        let f = OpenOptions::new().append(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    /// A rotation leaves the full file under its rotated name and an empty one at the path,
    /// never replacing a file: not an earlier rotated file with the same time, and not a file
    /// another process created at the path in between (then the full file keeps its new name
    /// and the other process's file stays). A crash's leftover is removed at the next start.
    #[test]
    fn rotate_and_repair() {
        let dir = scratch("rotate");
        let live = dir.join("api-vm.log");
        let n = Names::new(&live, "api-{hostname}.log");
        fs::write(&live, b"old\n").unwrap();
        let Ok(r) = rotate(&n, EventSync::Data, at("2026-01-01T00:00:00Z")) else {
            panic!("rotation failed")
        };
        assert_eq!(fs::read(n.path(&r.name)).unwrap(), b"old\n");
        assert_eq!(fs::read(&live).unwrap(), b"");
        assert!(file::same_file(&r.file, &live));
        // The same instant again: the next microsecond, nothing replaced.
        fs::write(&live, b"second\n").unwrap();
        let Ok(r2) = rotate(&n, EventSync::None, at("2026-01-01T00:00:00Z")) else {
            panic!("rotation failed")
        };
        assert_eq!(r2.name, "api-vm.20260101T000000.000001Z.log");
        assert_eq!(fs::read(n.path(&r.name)).unwrap(), b"old\n");
        // The path taken between the two renames: simulated by the second rename's target.
        fs::write(&live, b"theirs\n").unwrap();
        let fresh = n.path(".api-vm.log.rotating");
        fs::write(&fresh, b"").unwrap();
        assert!(matches!(
            rename_noreplace(&fresh, &live),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists
        ));
        assert_eq!(fs::read(&live).unwrap(), b"theirs\n");
        repair(&n);
        assert!(!fresh.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    /// LOG_KEEP deletes the oldest rotated files of this file only; LOG_MAX_AGE deletes old
    /// kin, but never the live file, a locked file (a live replica's), a young file, or a
    /// file outside the pattern.
    #[test]
    fn retention_keeps_and_ages() {
        let dir = scratch("retain");
        let live = dir.join("api-vm.log");
        let n = Names::new(&live, "api-{hostname}.log");
        let hour = Duration::from_secs(3600);
        fs::write(&live, b"live\n").unwrap();
        age(&live, 10 * hour);
        for h in 0..5 {
            let name = n.rotated(at(&format!("2026-01-01T0{h}:00:00Z")));
            fs::write(n.path(&name), b"x\n").unwrap();
        }
        for name in ["api-gone.log", "api-held.log", "api-young.log", "other.log"] {
            fs::write(n.path(name), b"y\n").unwrap();
        }
        for name in ["api-gone.log", "api-held.log", "other.log"] {
            age(&n.path(name), 10 * hour);
        }
        let held = OpenOptions::new()
            .append(true)
            .open(n.path("api-held.log"))
            .unwrap();
        held.lock_shared().unwrap();

        let r = retain(&n, Some(3), None);
        assert_eq!(r.deleted.len(), 2);
        assert!(r.deleted.iter().all(|d| d.reason == "LOG_KEEP"));
        assert!(
            r.deleted[0]
                .path
                .ends_with("api-vm.20260101T000000.000000Z.log")
        );
        assert_eq!((r.rotated_files, r.rotated_bytes), (3, 6));

        let r = retain(&n, Some(3), Some(hour));
        let gone: Vec<String> = r
            .deleted
            .iter()
            .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(gone, ["api-gone.log"], "{:?}", r.failed);
        assert!(r.deleted[0].idle > 9 * hour);
        for left in ["api-vm.log", "api-held.log", "api-young.log", "other.log"] {
            assert!(n.path(left).exists(), "{left}");
        }
        drop(held);
        let r = retain(&n, Some(3), Some(hour));
        assert_eq!(r.deleted.len(), 1, "the unlocked file goes");
        assert!(!n.path("api-held.log").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}

//! `--prepare-logs UID:GID`, the one job this binary does as root: a one-shot container
//! (compose's `log-init`) makes the mounted log directory belong to the unprivileged service
//! before it starts, without following links an untrusted user may have planted there.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `--prepare-logs UID:GID`: creates the log directory and hands it (and an existing log
/// file) to `uid:gid`, readable by everyone, so the unprivileged service can write and the
/// host user can read. Meant for a one-shot root container before the service starts.
pub fn prepare_dir(path: &Path, uid: u32, gid: u32) -> Result<String, String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fail = |what: &str, p: &Path, e: io::Error| format!("cannot {what} {}: {e}", p.display());
    fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    // Running as root on a directory others could write to: never follow a planted symlink,
    // which would hand its target to `uid`.
    let refuse_links = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "refusing to prepare {}: it is a symbolic link",
            p.display()
        )),
        _ => Ok(()),
    };
    refuse_links(dir)?;
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(|e| fail("chown", dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("chmod", dir, e))?;
    if fs::symlink_metadata(path).is_ok() {
        refuse_links(path)?;
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| fail("chown", path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .map_err(|e| fail("chmod", path, e))?;
    }
    Ok(format!(
        "log directory {} ready for {uid}:{gid}",
        dir.display()
    ))
}

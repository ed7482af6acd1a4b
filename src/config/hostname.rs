//! The name of this replica: the kernel's hostname.

use std::sync::OnceLock;

/// The kernel's hostname (the container id under Docker, the pod name under Kubernetes), read
/// once: `GET /`, the `host` field of log records and `{hostname}` in `LOG_FILE` must agree.
/// No libc call needed.
pub(crate) fn hostname() -> &'static str {
    static HOSTNAME: OnceLock<String> = OnceLock::new();
    HOSTNAME.get_or_init(|| {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
}

//! The standard process metrics, read from `/proc` at each scrape (no libc: the kernel's text
//! files say it all). A reading that fails is left out of the scrape rather than made up.

use std::fs;
use std::sync::OnceLock;

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc` says about this process.
pub(crate) struct Process {
    /// User and system CPU time, in seconds.
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<u64>,
    pub(crate) virtual_bytes: Option<u64>,
    pub(crate) open_fds: Option<u64>,
    pub(crate) max_fds: Option<u64>,
    /// Since the Unix epoch, in seconds.
    pub(crate) start_time_seconds: Option<f64>,
}

impl Process {
    pub(crate) fn read() -> Process {
        let stat = fs::read_to_string("/proc/self/stat").ok();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Numbered as in proc(5), from 3 (`state`) on.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) as f64 / TICKS_PER_SECOND);
        let start_time_seconds = field(22)
            .zip(boot_time())
            .map(|(ticks, boot)| boot as f64 + ticks as f64 / TICKS_PER_SECOND);
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|k| k * 1024)
        };
        Process {
            cpu_seconds,
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            open_fds: fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
            max_fds: max_open_files(),
            start_time_seconds,
        }
    }
}

/// The machine's boot time (`btime` in `/proc/stat`), in seconds since the Unix epoch. Read
/// once: it does not change, and `/proc/stat` is long on a machine with many CPUs.
fn boot_time() -> Option<u64> {
    static BOOT: OnceLock<Option<u64>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The soft limit on open files (`Max open files` in `/proc/self/limits`).
fn max_open_files() -> Option<u64> {
    fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reading is there on Linux, and plausible for a test process.
    #[test]
    fn proc_readings_are_plausible() {
        let p = Process::read();
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0));
        assert!(p.resident_bytes.is_some_and(|b| b > 1 << 20));
        assert!(p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds.is_some_and(|n| n >= 3));
        assert!(p.max_fds.is_some_and(|n| n >= p.open_fds.unwrap()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}

//! Configuration: every setting comes from an environment variable and can be overridden by
//! a flag of the same meaning (`PORT=9000` or `--port 9000`); flags win. The settings are one
//! table (`SETTINGS`) behind the parser, `--help`, the error messages and the README's
//! table, so they stay in step. Bad input is a [`ConfigError`], which `main` turns into exit
//! code 2.
//!
//! Files: this one holds the settings, the table and the help; `parse` reads flags and the
//! environment; `values` parses each kind of value (durations, addresses, networks);
//! `hostname` names this replica.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

mod hostname;
mod parse;
mod values;

pub(crate) use hostname::hostname;
pub(crate) use parse::HOSTNAME_PLACEHOLDER;
pub use parse::parse;
pub use values::IpNet;

/// What the process was asked to do.
#[derive(Debug)]
pub enum Command {
    /// Run the server.
    Serve(Config),
    /// Probe `GET /health` of the server this configuration describes (`--healthcheck`).
    Healthcheck(Config),
    /// Make the log directory writable by `uid:gid`, then exit (`--prepare-logs UID:GID`).
    PrepareLogs(Config, u32, u32),
    Help,
    Version,
}

/// The validated settings of one server.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    /// `host` is the default `::` (not set by the user): where the kernel has IPv6 off, the
    /// server listens on `0.0.0.0` instead.
    pub host_fallback: bool,
    pub port: u16,
    pub log_file: PathBuf,
    pub log_level: LevelFilter,
    pub event_sync: EventSync,
    pub log_rotation: LogRotation,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub grace: Duration,
    pub drain_delay: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub workers: usize,
    /// The port of the metrics listener (on `host`), if it is on.
    pub metrics_port: Option<u16>,
}

/// The log file's own rotation and retention (`LOG_MAX_BYTES`, `LOG_KEEP`, `LOG_MAX_AGE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRotation {
    /// The file is rotated before a record would take it past this size; 0: never.
    pub max_bytes: u64,
    /// Rotated files of this log file kept; older ones are deleted after each rotation.
    pub keep: usize,
    /// Files of the [`pattern`](Self::pattern) in the log directory not written for this long
    /// are deleted (left by replicas that are gone, or rotated long ago); `None`: never.
    pub max_age: Option<Duration>,
    /// `LOG_FILE`'s file name as given, `{hostname}` not replaced: the name of every
    /// replica's file.
    pub pattern: String,
}

impl LogRotation {
    /// Whether the file is rotated by size.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }
}

/// When an event's `201` is sent (`EVENT_SYNC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSync {
    /// Once the `write(2)` carrying its record returned: the record survives the process
    /// dying, not the machine.
    None,
    /// Once the file's data has also been through `fdatasync`: the record survives a power
    /// loss. One sync serves every event of a batch.
    Data,
}

impl EventSync {
    /// The mode's name, as `EVENT_SYNC` takes it and the startup record shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSync::None => "none",
            EventSync::Data => "data",
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        let env = |_: &str| None;
        match parse(Vec::<OsString>::new(), env) {
            Ok(Command::Serve(cfg)) => cfg,
            other => unreachable!("the built-in defaults parse: {other:?}"),
        }
    }
}

/// A setting: its flag, its environment variable, its default and one line of help.
struct Setting {
    flag: &'static str,
    env: &'static str,
    default: &'static str,
    help: &'static str,
}

/// The table behind parsing and `--help`. Keep it in step with the README's config table.
const SETTINGS: &[Setting] = &[
    Setting {
        flag: "--host",
        env: "HOST",
        default: "::",
        help: "listen address; the default takes IPv4 and IPv6 (0.0.0.0 where IPv6 is off)",
    },
    Setting {
        flag: "--port",
        env: "PORT",
        default: "8000",
        help: "listen port (0: any free port)",
    },
    Setting {
        flag: "--log-file",
        env: "LOG_FILE",
        default: "logs/api.log",
        help: "JSON-lines log file, relative to the working directory; {hostname} is replaced",
    },
    Setting {
        flag: "--log-level",
        env: "LOG_LEVEL",
        default: "info",
        help: "error, warn, info, debug or off (event records are always written)",
    },
    Setting {
        flag: "--event-sync",
        env: "EVENT_SYNC",
        default: "none",
        help: "an event's 201 follows: none, its write(2); data, also an fdatasync (survives power loss)",
    },
    Setting {
        flag: "--log-max-bytes",
        env: "LOG_MAX_BYTES",
        default: "0",
        help: "rotate the log file before it grows past this size, e.g. 100MiB (0: never)",
    },
    Setting {
        flag: "--log-keep",
        env: "LOG_KEEP",
        default: "10",
        help: "rotated files of the log file kept; older ones are deleted at each rotation",
    },
    Setting {
        flag: "--log-max-age",
        env: "LOG_MAX_AGE",
        default: "",
        help: "delete LOG_FILE's files in its directory (any hostname) not written for this long, e.g. 7d",
    },
    Setting {
        flag: "--max-body-bytes",
        env: "MAX_BODY_BYTES",
        default: "65536",
        help: "largest request body accepted (413 above)",
    },
    Setting {
        flag: "--max-header-bytes",
        env: "MAX_HEADER_BYTES",
        default: "16384",
        help: "largest request head accepted (431 above)",
    },
    Setting {
        flag: "--max-connections",
        env: "MAX_CONNECTIONS",
        default: "1024",
        help: "concurrent connections; at the cap idle and slow ones make room for new clients",
    },
    Setting {
        flag: "--header-timeout",
        env: "HEADER_TIMEOUT",
        default: "10s",
        help: "time to send a request head once it has begun (slow clients are dropped)",
    },
    Setting {
        flag: "--idle-timeout",
        env: "IDLE_TIMEOUT",
        default: "75s",
        help: "idle keep-alive connections are closed after this",
    },
    Setting {
        flag: "--body-timeout",
        env: "BODY_TIMEOUT",
        default: "10s",
        help: "time to receive a request body (408 after)",
    },
    Setting {
        flag: "--write-timeout",
        env: "WRITE_TIMEOUT",
        default: "10s",
        help: "longest an answer may wait for the client to read it (then the connection closes)",
    },
    Setting {
        flag: "--grace",
        env: "GRACE",
        default: "5s",
        help: "on SIGTERM/SIGINT, time for in-flight requests to finish",
    },
    Setting {
        flag: "--drain-delay",
        env: "DRAIN_DELAY",
        default: "0",
        help: "on SIGTERM/SIGINT, time to keep accepting (with /health 503) before closing",
    },
    Setting {
        flag: "--trusted-proxies",
        env: "TRUSTED_PROXIES",
        default: "",
        help: "comma-separated IPs or CIDRs whose X-Forwarded-For is believed",
    },
    Setting {
        flag: "--metrics-port",
        env: "METRICS_PORT",
        default: "",
        help: "serve GET /metrics (Prometheus) on this port of the same host; unset: off",
    },
    Setting {
        flag: "--workers",
        env: "WORKERS",
        default: "0",
        help: "runtime worker threads; 0 means one per CPU",
    },
];

/// Invalid command line or environment; `main` prints it with the usage and exits 2.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The text of `--help`.
pub fn help() -> String {
    let mut out = format!(
        "api {} - minimal HTTP service with JSON file logs\n\n\
         Usage: api [OPTIONS]\n       api --healthcheck [OPTIONS]\n\n\
         Every option can also be set by the environment variable shown; the flag wins.\n\n\
         Options:\n",
        env!("CARGO_PKG_VERSION")
    );
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "none"
        } else {
            s.default
        };
        out.push_str(&format!(
            "  {:<20} {:<17} {} (default: {})\n",
            format!("{} <v>", s.flag),
            s.env,
            s.help,
            default
        ));
    }
    out.push_str(
        "  --healthcheck                          probe GET /health of the configured server; exit 0 if healthy, 1 if not\n  \
         --prepare-logs <uid:gid>               create the log directory and hand it to uid:gid, then exit (run as root)\n  \
         -h, --help                             print this help\n  \
         -V, --version                          print the version\n\n\
         Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn defaults_match_the_table() {
        let c = Config::default();
        assert_eq!(c.port, 8000);
        assert_eq!(c.host.to_string(), "::");
        assert!(c.host_fallback);
        assert_eq!(c.drain_delay, Duration::ZERO);
        assert_eq!(c.log_file, PathBuf::from("logs/api.log"));
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(c.event_sync, EventSync::None);
        assert!(!c.log_rotation.enabled());
        assert_eq!(c.log_rotation.keep, 10);
        assert_eq!(c.log_rotation.max_age, None);
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.grace, Duration::from_secs(5));
        assert!(c.trusted_proxies.is_empty());
    }

    /// Every setting has a row in the README's configuration table with the same default.
    #[test]
    fn readme_table_matches_settings() {
        let readme = include_str!("../../README.md");
        for s in SETTINGS {
            let row = format!("| `{}` | `{}` |", s.flag, s.env);
            let line = readme
                .lines()
                .find(|l| l.starts_with(&row))
                .unwrap_or_else(|| panic!("README has no row {row}"));
            let default = line[row.len()..].split('|').next().unwrap_or("").trim();
            let expected = if s.default.is_empty() {
                "none".to_string()
            } else {
                format!("`{}`", s.default)
            };
            assert_eq!(default, expected, "README default of {}", s.flag);
        }
    }
}

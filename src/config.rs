//! Configuration: every setting comes from an environment variable and can be overridden by
//! a flag of the same meaning (`PORT=9000` or `--port 9000`); flags win. Parsing is one pass
//! over a table of settings so that `--help`, the error messages and the README stay in step.
//! Bad input is a [`ConfigError`], which `main` turns into exit code 2.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use log::LevelFilter;

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

/// Parses flags (without the program name) over environment values looked up by `env`.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, ConfigError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
    E: Fn(&str) -> Option<OsString>,
{
    // (value, where it came from) for each setting, in SETTINGS order.
    let mut values: Vec<Option<(String, String)>> = Vec::with_capacity(SETTINGS.len());
    for s in SETTINGS {
        let v = match env(s.env) {
            Some(v) => Some((utf8(v, s.env)?, s.env.to_string())),
            None => None,
        };
        values.push(v);
    }

    let mut healthcheck = false;
    let mut prepare: Option<String> = None;
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let arg = utf8(arg, "argument")?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, ConfigError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => match args.next() {
                    Some(v) => utf8(v, name),
                    None => Err(ConfigError(format!("{name} needs a value"))),
                },
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--healthcheck" => healthcheck = true,
            "--prepare-logs" => prepare = Some(value(&name)?),
            _ => match SETTINGS.iter().position(|s| s.flag == name) {
                Some(i) => values[i] = Some((value(&name)?, name.clone())),
                None => return Err(ConfigError(format!("unknown argument '{arg}'"))),
            },
        }
    }

    let get = |flag: &str| -> (String, String) {
        let i = SETTINGS
            .iter()
            .position(|s| s.flag == flag)
            .expect("every setting read below is in SETTINGS");
        values[i]
            .clone()
            .unwrap_or_else(|| (SETTINGS[i].default.to_string(), "default".into()))
    };
    let host = get("--host");
    let cfg = Config {
        host: typed(host.clone(), "an IP address such as :: or 0.0.0.0", |s| {
            IpAddr::from_str(s).map_err(drop)
        })?,
        host_fallback: host.1 == "default",
        port: typed(
            get("--port"),
            "a port number 0-65535 (0: any free port)",
            parse_port,
        )?,
        log_file: log_file(get("--log-file"))?,
        log_level: typed(
            get("--log-level"),
            "error, warn, info, debug or off",
            parse_level,
        )?,
        event_sync: typed(get("--event-sync"), "none or data", |s| {
            [EventSync::None, EventSync::Data]
                .into_iter()
                .find(|mode| s.eq_ignore_ascii_case(mode.as_str()))
                .ok_or(())
        })?,
        max_body_bytes: typed(get("--max-body-bytes"), "a byte count >= 1", positive)?,
        max_header_bytes: typed(
            get("--max-header-bytes"),
            "a byte count 1024-1048576",
            |s| {
                positive(s).and_then(|n| {
                    if (1024..=1 << 20).contains(&n) {
                        Ok(n)
                    } else {
                        Err(())
                    }
                })
            },
        )?,
        max_connections: typed(get("--max-connections"), "a count >= 1", positive)?,
        header_timeout: typed(get("--header-timeout"), "a duration such as 10s", duration)?,
        idle_timeout: typed(get("--idle-timeout"), "a duration such as 75s", duration)?,
        body_timeout: typed(get("--body-timeout"), "a duration such as 10s", duration)?,
        write_timeout: typed(get("--write-timeout"), "a duration such as 10s", duration)?,
        grace: typed(
            get("--grace"),
            "a duration such as 5s (0 allowed)",
            duration_or_zero,
        )?,
        drain_delay: typed(
            get("--drain-delay"),
            "a duration such as 5s (0 allowed)",
            duration_or_zero,
        )?,
        trusted_proxies: typed(
            get("--trusted-proxies"),
            "IPs or CIDRs, comma-separated",
            |s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(IpNet::from_str)
                    .collect()
            },
        )?,
        workers: typed(get("--workers"), "a thread count 0-1024", |s| {
            s.parse::<usize>()
                .map_err(drop)
                .and_then(|n| if n <= 1024 { Ok(n) } else { Err(()) })
        })?,
    };

    match (healthcheck, prepare) {
        (true, Some(_)) => Err(ConfigError(
            "--healthcheck and --prepare-logs exclude each other".into(),
        )),
        (true, None) => Ok(Command::Healthcheck(cfg)),
        (false, Some(owner)) => {
            let parsed = owner
                .split_once(':')
                .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
            match parsed {
                Some((uid, gid)) => Ok(Command::PrepareLogs(cfg, uid, gid)),
                None => Err(ConfigError(format!(
                    "invalid value '{owner}' for --prepare-logs: expected numeric UID:GID such as 10001:10001"
                ))),
            }
        }
        (false, None) => Ok(Command::Serve(cfg)),
    }
}

fn utf8(v: OsString, what: &str) -> Result<String, ConfigError> {
    v.into_string()
        .map_err(|v| ConfigError(format!("invalid value {v:?} for {what}: not valid UTF-8")))
}

/// Parses `raw` with `f`, or names the setting, the value and what was expected.
fn typed<T>(
    (raw, origin): (String, String),
    expected: &str,
    f: impl FnOnce(&str) -> Result<T, ()>,
) -> Result<T, ConfigError> {
    f(&raw).map_err(|()| {
        ConfigError(format!(
            "invalid value '{raw}' for {origin}: expected {expected}"
        ))
    })
}

fn parse_port(s: &str) -> Result<u16, ()> {
    s.parse::<u16>().map_err(drop)
}

fn positive(s: &str) -> Result<usize, ()> {
    match s.parse::<usize>() {
        Ok(0) | Err(_) => Err(()),
        Ok(n) => Ok(n),
    }
}

fn parse_level(s: &str) -> Result<LevelFilter, ()> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        _ => Err(()),
    }
}

/// A [`duration`], or `0`.
fn duration_or_zero(s: &str) -> Result<Duration, ()> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        duration(s)
    }
}

/// The placeholder in `LOG_FILE` that becomes this machine's [`hostname`].
const HOSTNAME_PLACEHOLDER: &str = "{hostname}";

/// `LOG_FILE` with `{hostname}` replaced, so that replicas sharing a volume each write a file
/// of their own. A hostname that cannot be part of a file name is refused, not mangled.
fn log_file((raw, origin): (String, String)) -> Result<PathBuf, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError(format!(
            "invalid value '' for {origin}: expected a file path"
        )));
    }
    if !raw.contains(HOSTNAME_PLACEHOLDER) {
        return Ok(PathBuf::from(raw));
    }
    let host = hostname();
    if host.contains(['/', '\0']) || host == "." || host == ".." {
        return Err(ConfigError(format!(
            "invalid value '{raw}' for {origin}: the hostname {host:?} cannot be part of a file name; set LOG_FILE without {HOSTNAME_PLACEHOLDER}"
        )));
    }
    Ok(PathBuf::from(raw.replace(HOSTNAME_PLACEHOLDER, host)))
}

/// The kernel's hostname (the container id under Docker, the pod name under Kubernetes), read
/// once: `GET /`, the `host` field of log records and `{hostname}` in `LOG_FILE` must agree.
/// No libc call needed.
pub fn hostname() -> &'static str {
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

/// `250ms`, `10s`, `2m`, or a bare number of seconds; zero is refused (use
/// [`duration_or_zero`] where it means "none").
fn duration(s: &str) -> Result<Duration, ()> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let secs = num.parse::<f64>().map_err(drop)? * scale;
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(())
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 peer matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn mask_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    prefix == 0 || a.checked_shr(shift) == b.checked_shr(shift)
}

impl FromStr for IpNet {
    type Err = ();

    fn from_str(s: &str) -> Result<IpNet, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr).map_err(drop)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(drop)?,
            None => max,
        };
        if prefix > max {
            return Err(());
        }
        Ok(IpNet { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn serve(args: &[&str], env: &'static [(&'static str, &'static str)]) -> Config {
        match parse(args.iter().copied(), env_of(env)) {
            Ok(Command::Serve(c)) => c,
            other => panic!("expected Serve, got {other:?}"),
        }
    }

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
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(c.grace, Duration::from_secs(5));
        assert!(c.trusted_proxies.is_empty());
    }

    #[test]
    fn flags_win_over_env() {
        let c = serve(
            &["--port", "9001", "--log-level=debug"],
            &[("PORT", "9000"), ("LOG_LEVEL", "warn")],
        );
        assert_eq!(c.port, 9001);
        assert_eq!(c.log_level, LevelFilter::Debug);
        let c = serve(&["--event-sync", "data"], &[("EVENT_SYNC", "none")]);
        assert_eq!(c.event_sync, EventSync::Data);
    }

    #[test]
    fn errors_name_setting_and_value() {
        let e = parse(["--port", "70000"], env_of(&[])).unwrap_err();
        assert_eq!(
            e.0,
            "invalid value '70000' for --port: expected a port number 0-65535 (0: any free port)"
        );
        let e = parse(Vec::<String>::new(), env_of(&[("LOG_LEVEL", "loud")])).unwrap_err();
        assert!(e.0.contains("'loud' for LOG_LEVEL"), "{e}");
        let e = parse(Vec::<String>::new(), env_of(&[("EVENT_SYNC", "full")])).unwrap_err();
        assert_eq!(
            e.0,
            "invalid value 'full' for EVENT_SYNC: expected none or data"
        );
        let e = parse(["--bogus"], env_of(&[])).unwrap_err();
        assert_eq!(e.0, "unknown argument '--bogus'");
    }

    #[test]
    fn durations_and_networks() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(duration("0").is_err() && duration("-1s").is_err() && duration("x").is_err());
        let net: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(net.contains("172.31.255.1".parse().unwrap()));
        assert!(!net.contains("172.32.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:172.16.0.9".parse().unwrap()));
        let any: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }

    #[test]
    fn only_the_default_host_falls_back_to_ipv4() {
        assert!(!serve(&[], &[("HOST", "::")]).host_fallback);
        assert!(!serve(&["--host", "0.0.0.0"], &[]).host_fallback);
        assert_eq!(serve(&[], &[("HOST", "::1")]).host.to_string(), "::1");
    }

    #[test]
    fn drain_delay_takes_zero_and_durations() {
        assert_eq!(
            serve(&["--drain-delay", "0"], &[]).drain_delay,
            Duration::ZERO
        );
        let c = serve(&[], &[("DRAIN_DELAY", "5s")]);
        assert_eq!(c.drain_delay, Duration::from_secs(5));
        let e = parse(["--drain-delay", "soon"], env_of(&[])).unwrap_err();
        assert!(e.0.contains("'soon' for --drain-delay"), "{e}");
    }

    #[test]
    fn log_file_hostname_placeholder_is_expanded() {
        let c = serve(&[], &[("LOG_FILE", "logs/api-{hostname}.log")]);
        assert_eq!(
            c.log_file,
            PathBuf::from(format!("logs/api-{}.log", hostname()))
        );
        assert!(!hostname().is_empty());
        let c = serve(&["--log-file", "logs/{host}.log"], &[]);
        assert_eq!(
            c.log_file,
            PathBuf::from("logs/{host}.log"),
            "only {{hostname}}"
        );
        assert!(parse(["--log-file", ""], env_of(&[])).is_err());
    }

    /// Every setting has a row in the README's configuration table with the same default.
    #[test]
    fn readme_table_matches_settings() {
        let readme = include_str!("../README.md");
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

    #[test]
    fn prepare_logs_needs_numeric_owner() {
        assert!(matches!(
            parse(["--prepare-logs", "10001:10001"], env_of(&[])),
            Ok(Command::PrepareLogs(_, 10001, 10001))
        ));
        assert!(parse(["--prepare-logs", "app"], env_of(&[])).is_err());
    }
}

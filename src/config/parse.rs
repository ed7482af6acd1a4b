//! Parsing: one pass over the flags, on top of the environment, through the settings table,
//! into a [`Command`]. Each value is checked by its kind's parser in `values`; an error names
//! the setting, where the value came from, the value and what was expected.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::values::{
    IpNet, age, duration, duration_or_zero, parse_level, parse_port, positive, size,
};
use super::{Command, Config, ConfigError, EventSync, LogRotation, SETTINGS, hostname};

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
    let raw_log_file = get("--log-file");
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
        log_rotation: log_rotation(&raw_log_file.0, &get)?,
        log_file: log_file(raw_log_file)?,
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
        metrics_port: typed(
            get("--metrics-port"),
            "a port number 0-65535 (0: any free port), or nothing for off",
            |s| match s.trim() {
                "" => Ok(None),
                port => parse_port(port).map(Some),
            },
        )?,
    };

    if cfg.metrics_port.is_some_and(|m| m != 0 && m == cfg.port) {
        return Err(ConfigError(format!(
            "invalid value '{}' for {}: the metrics port must differ from the API's port",
            cfg.port,
            get("--metrics-port").1
        )));
    }

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

/// Smallest `LOG_MAX_BYTES` other than 0: a file holds at least a few hundred records, so a
/// rotation is never a rename per batch.
const MIN_ROTATE_BYTES: u64 = 64 * 1024;

/// `LOG_MAX_BYTES`, `LOG_KEEP` and `LOG_MAX_AGE`, with the pattern of `LOG_FILE` (`raw`, as
/// given) that `LOG_MAX_AGE` deletes by.
fn log_rotation(
    raw: &str,
    get: &impl Fn(&str) -> (String, String),
) -> Result<LogRotation, ConfigError> {
    let max_bytes = typed(
        get("--log-max-bytes"),
        "a size such as 100MiB, at least 64KiB, or 0 (never)",
        |s| match size(s)? {
            n if n == 0 || n >= MIN_ROTATE_BYTES => Ok(n),
            _ => Err(()),
        },
    )?;
    let keep = typed(get("--log-keep"), "a count >= 1", positive)?;
    let max_age = get("--log-max-age");
    let max_age = if max_age.0.trim().is_empty() {
        None
    } else {
        Some(typed(max_age, "a duration such as 7d, 12h or 30m", age)?)
    };
    let pattern = Path::new(raw)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if max_age.is_some() && pattern.replace(HOSTNAME_PLACEHOLDER, "").is_empty() {
        // The pattern would be every file in the directory.
        return Err(ConfigError(format!(
            "LOG_MAX_AGE needs a LOG_FILE name with more than {HOSTNAME_PLACEHOLDER} in it, such as logs/api-{HOSTNAME_PLACEHOLDER}.log (got '{raw}')"
        )));
    }
    Ok(LogRotation {
        max_bytes,
        keep,
        max_age,
        pattern,
    })
}

/// The placeholder in `LOG_FILE` that becomes this machine's [`hostname()`].
pub(crate) const HOSTNAME_PLACEHOLDER: &str = "{hostname}";

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use log::LevelFilter;

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

    #[test]
    fn metrics_port_is_off_unless_set_and_differs_from_the_port() {
        assert_eq!(serve(&[], &[]).metrics_port, None);
        assert_eq!(serve(&[], &[("METRICS_PORT", "")]).metrics_port, None);
        assert_eq!(
            serve(&["--metrics-port", "9464"], &[]).metrics_port,
            Some(9464)
        );
        assert_eq!(
            serve(&[], &[("METRICS_PORT", "0"), ("PORT", "0")]).metrics_port,
            Some(0)
        );
        let e = parse(["--metrics-port", "8000"], env_of(&[])).unwrap_err();
        assert!(e.0.contains("must differ from the API's port"), "{e}");
        assert!(parse(["--metrics-port", "x"], env_of(&[])).is_err());
    }

    #[test]
    fn log_rotation_settings() {
        let c = serve(
            &["--log-max-bytes", "100MiB", "--log-max-age=7d"],
            &[("LOG_KEEP", "4"), ("LOG_FILE", "logs/api-{hostname}.log")],
        );
        let r = c.log_rotation;
        assert_eq!(r.max_bytes, 100 << 20);
        assert!(r.enabled());
        assert_eq!(r.keep, 4);
        assert_eq!(r.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(r.pattern, "api-{hostname}.log");
        let e = parse(["--log-max-bytes", "1000"], env_of(&[])).unwrap_err();
        assert_eq!(
            e.0,
            "invalid value '1000' for --log-max-bytes: expected a size such as 100MiB, at least 64KiB, or 0 (never)"
        );
        assert!(parse(["--log-keep", "0"], env_of(&[])).is_err());
        assert!(parse(["--log-max-age", "soon"], env_of(&[])).is_err());
        let e = parse(
            ["--log-max-age", "1d"],
            env_of(&[("LOG_FILE", "logs/{hostname}")]),
        )
        .unwrap_err();
        assert!(e.0.starts_with("LOG_MAX_AGE needs a LOG_FILE name"), "{e}");
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

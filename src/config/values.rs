//! The kinds of values settings take: ports, counts, log levels, durations, sizes, IP
//! networks. Each parser says only whether the text is one; `parse` words the error.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use log::LevelFilter;

pub(super) fn parse_port(s: &str) -> Result<u16, ()> {
    s.parse::<u16>().map_err(drop)
}

pub(super) fn positive(s: &str) -> Result<usize, ()> {
    match s.parse::<usize>() {
        Ok(0) | Err(_) => Err(()),
        Ok(n) => Ok(n),
    }
}

pub(super) fn parse_level(s: &str) -> Result<LevelFilter, ()> {
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
pub(super) fn duration_or_zero(s: &str) -> Result<Duration, ()> {
    if s.trim() == "0" {
        Ok(Duration::ZERO)
    } else {
        duration(s)
    }
}

/// `250ms`, `10s`, `2m`, or a bare number of seconds; zero is refused (use
/// [`duration_or_zero`] where it means "none").
pub(super) fn duration(s: &str) -> Result<Duration, ()> {
    scaled(s, &[("ms", 0.001), ("s", 1.0), ("m", 60.0)], 86_400.0)
}

/// A number of seconds, or of the first of `units` (suffix, seconds each) it ends with; above
/// zero and at most `max_secs`.
fn scaled(s: &str, units: &[(&str, f64)], max_secs: f64) -> Result<Duration, ()> {
    let s = s.trim();
    let (num, scale) = units
        .iter()
        .find_map(|&(unit, scale)| s.strip_suffix(unit).map(|n| (n, scale)))
        .unwrap_or((s, 1.0));
    let secs = num.trim().parse::<f64>().map_err(drop)? * scale;
    if secs.is_finite() && secs > 0.0 && secs <= max_secs {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(())
    }
}

/// A byte count: a bare number, or one with a unit, binary (`KiB`, `MiB`, `GiB`, `TiB`, or
/// Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`) or decimal (`kB`, `MB`, `GB`, `TB`); units in any case.
pub(super) fn size(s: &str) -> Result<u64, ()> {
    const UNITS: [(&str, u64); 13] = [
        ("kib", 1 << 10),
        ("mib", 1 << 20),
        ("gib", 1 << 30),
        ("tib", 1 << 40),
        ("ki", 1 << 10),
        ("mi", 1 << 20),
        ("gi", 1 << 30),
        ("ti", 1 << 40),
        ("kb", 1_000),
        ("mb", 1_000_000),
        ("gb", 1_000_000_000),
        ("tb", 1_000_000_000_000),
        ("b", 1),
    ];
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let unit = unit.trim().to_ascii_lowercase();
    let scale = match UNITS.iter().find(|(name, _)| *name == unit) {
        Some((_, scale)) => *scale,
        None if unit.is_empty() => 1,
        None => return Err(()),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or(())
}

/// A duration that may run to days: `90s`, `30m`, `12h`, `7d`, or a bare number of seconds;
/// above zero, at most ten years.
pub(super) fn age(s: &str) -> Result<Duration, ()> {
    let units = [("s", 1.0), ("m", 60.0), ("h", 3_600.0), ("d", 86_400.0)];
    scaled(s, &units, 3_650.0 * 86_400.0)
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
    fn sizes_and_ages() {
        assert_eq!(size("0"), Ok(0));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("100MiB"), Ok(100 << 20));
        assert_eq!(size("64Mi"), Ok(64 << 20));
        assert_eq!(size("2 GiB"), Ok(2 << 30));
        assert_eq!(size("1mb"), Ok(1_000_000));
        assert_eq!(size("512kB"), Ok(512_000));
        assert!(size("").is_err() && size("MiB").is_err() && size("1.5MiB").is_err());
        assert!(size("10XB").is_err() && size("-1").is_err());
        assert!(size("99999999999TiB").is_err(), "overflow is refused");
        assert_eq!(age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(age("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(age("0").is_err() && age("-1d").is_err() && age("d").is_err());
        assert!(age("3651d").is_err());
    }
}

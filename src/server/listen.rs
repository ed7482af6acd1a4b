//! The listening socket: bound to the configured address, dual-stack by default, with a
//! backlog deep enough for the admission at the cap, and errors that say what to do.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;

/// Binds the configured address, naming it in the error. The default `::` takes IPv4 and
/// IPv6 clients (IPv4 ones as `::ffff:a.b.c.d`, unless `net.ipv6.bindv6only` is set; neither
/// tokio nor std can clear `IPV6_V6ONLY` without unsafe code or another crate) and falls back
/// to `0.0.0.0` where the kernel has IPv6 off. An address the user chose has no fallback.
pub async fn listen(cfg: &Config) -> io::Result<TcpListener> {
    let port = cfg.port;
    let addr = SocketAddr::new(cfg.host, port);
    let listener = match bind_socket(addr) {
        Err(e) if cfg.host_fallback && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            log::info!(error:% = e; "IPv6 is off in this kernel; listening on IPv4 only");
            bind_socket(v4).map_err(|e| bind_error(v4, e))?
        }
        bound => bound.map_err(|e| bind_error(addr, e))?,
    };
    if addr.ip() == Ipv6Addr::UNSPECIFIED && v6_only_by_default() {
        log::warn!(
            "net.ipv6.bindv6only is 1: IPv4 clients cannot reach [::]; set HOST=0.0.0.0 for them"
        );
    }
    Ok(listener)
}

/// Binds the metrics port, if it is on, on the address the API's listener got (so the
/// fallback and its warnings happen once, in [`listen`]).
pub async fn listen_metrics(cfg: &Config, api: &TcpListener) -> io::Result<Option<TcpListener>> {
    let Some(port) = cfg.metrics_port else {
        return Ok(None);
    };
    let addr = SocketAddr::new(api.local_addr()?.ip(), port);
    bind_socket(addr).map(Some).map_err(|e| bind_error(addr, e))
}

/// Whether a bind to `::` failed because this kernel has no usable IPv6: no IPv6 sockets at all
/// (EAFNOSUPPORT, booted with `ipv6.disable=1`) or no `::` to bind (EADDRNOTAVAIL).
fn ipv6_unavailable(e: &io::Error) -> bool {
    // Linux's number; std maps it to no ErrorKind of its own.
    const EAFNOSUPPORT: i32 = 97;
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// Whether new IPv6 sockets take IPv6 clients only (the sysctl's default is 0).
fn v6_only_by_default() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1")
}

/// A bind error that names the address and says what to do.
fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "; another process holds it: stop that one or choose another --port/PORT"
        }
        io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need privileges: choose --port/PORT above 1023"
        }
        io::ErrorKind::AddrNotAvailable => "; no interface has that address: check --host/HOST",
        _ => "",
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{hint}"))
}

/// Connections the kernel completes ahead of `accept`. At the cap, the loop accepts only as
/// fast as it can make room; a burst of new connections larger than this queue would have
/// its excess (and any new client among it) wait a second for a SYN retransmit. Linux caps
/// it at `net.core.somaxconn` (4096 by default since 5.4).
const LISTEN_BACKLOG: u32 = 4096;

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio's `TcpListener::bind` do: a restart can bind while old connections of
    // the previous process linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_off_is_recognised_by_errno() {
        assert!(ipv6_unavailable(&io::Error::from_raw_os_error(97)));
        assert!(ipv6_unavailable(&io::Error::from(
            io::ErrorKind::AddrNotAvailable
        )));
        assert!(!ipv6_unavailable(&io::Error::from(
            io::ErrorKind::AddrInUse
        )));
        assert!(!ipv6_unavailable(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
    }
}

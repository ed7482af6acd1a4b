//! The exposition: every metric of the service (what the request path counts, the log
//! writer's numbers, the connection cap's, `/proc`) as the Prometheus text format (version
//! 0.0.4) or, when the scraper asks for it, OpenMetrics 1.0. [`Writer`] handles where the two differ: a
//! counter's family name (OpenMetrics drops `_total` from it), the build info's type, and
//! OpenMetrics' closing `# EOF`.

use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::app::App;
use crate::config::EventSync;
use crate::histogram::Snapshot;
use crate::logging::LogStats;
use crate::metrics::Process;

/// The content type of the text format.
pub(super) const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics.
pub(super) const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of `app`, now.
pub(super) fn render(app: &App, open_metrics: bool) -> String {
    let mut w = Writer {
        out: String::with_capacity(16 * 1024),
        open_metrics,
    };
    requests(&mut w, app);
    events(&mut w, app);
    log(&mut w, app);
    connections(&mut w, app);
    process(&mut w);
    w.family(
        "api_build_info",
        Kind::Info,
        "The service's version; always 1.",
    );
    w.sample(
        "api_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    if open_metrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

fn requests(w: &mut Writer, app: &App) {
    let Some(m) = &app.metrics else {
        return;
    };
    w.family(
        "http_requests_total",
        Kind::Counter,
        "Requests answered, by route, method and status code.",
    );
    // Only the combinations that happened: most never do (POST /health, say).
    for (route, method, code, n) in m.requests().filter(|r| r.3 > 0) {
        let code = code.map_or_else(|| "other".to_string(), |c| c.to_string());
        let labels = [("route", route), ("method", method), ("code", &code)];
        w.sample("http_requests_total", &labels, n);
    }
    w.family(
        "http_request_duration_seconds",
        Kind::Histogram,
        "Time from a request's head to its answer being ready, by route.",
    );
    for (route, h) in m.durations() {
        w.histogram(
            "http_request_duration_seconds",
            Some(("route", route)),
            &h,
            true,
        );
    }
}

fn events(w: &mut Writer, app: &App) {
    w.family(
        "api_events_accepted_total",
        Kind::Counter,
        "Events acknowledged with a 201.",
    );
    let accepted = app.events.load(Ordering::Relaxed);
    w.sample("api_events_accepted_total", &[], accepted);
    if let Some(m) = &app.metrics {
        w.family(
            "api_event_write_duration_seconds",
            Kind::Histogram,
            "Time from an event taken for writing to its acknowledgement (its batch's wait, write, sync).",
        );
        let h = m.event_writes();
        w.histogram("api_event_write_duration_seconds", None, &h, true);
    }
}

fn log(w: &mut Writer, app: &App) {
    let stats = app.sink.stats();
    let log = stats.snapshot();
    w.family(
        "api_log_ready",
        Kind::Gauge,
        "1 while the log file can be written (readiness follows it), else 0.",
    );
    w.sample("api_log_ready", &[], u8::from(app.sink.failure().is_none()));
    w.family(
        "api_draining",
        Kind::Gauge,
        "1 once a shutdown has begun, else 0.",
    );
    w.sample("api_draining", &[], u8::from(app.phases.draining()));
    w.family(
        "api_log_written_bytes_total",
        Kind::Counter,
        "Bytes written to the log file.",
    );
    let written = stats.written_bytes.load(Ordering::Relaxed);
    w.sample("api_log_written_bytes_total", &[], written);
    w.family(
        "api_log_write_failures_total",
        Kind::Counter,
        "Failed writes (or syncs) of the log, by reason; while the file fails, each retry counts.",
    );
    for (reason, n) in LogStats::FAILURE_KINDS.iter().zip(&stats.failures) {
        let n = n.load(Ordering::Relaxed);
        w.sample("api_log_write_failures_total", &[("reason", reason)], n);
    }
    w.family(
        "api_log_batch_events",
        Kind::Histogram,
        "Event records per write of the log (group commit): how many events share a write.",
    );
    let batches = stats.batch_events.snapshot();
    w.histogram("api_log_batch_events", None, &batches, false);
    if app.cfg.event_sync == EventSync::Data {
        w.family(
            "api_event_sync_duration_seconds",
            Kind::Histogram,
            "Time of each fdatasync that makes a batch of events durable (EVENT_SYNC=data).",
        );
        let syncs = stats.sync_us.snapshot();
        w.histogram("api_event_sync_duration_seconds", None, &syncs, true);
    }
    #[rustfmt::skip] // a table: one row a metric
    let gauges = [
        ("api_log_file_bytes", "Size of the log file being written.", Some(log.file_bytes)),
        ("api_log_rotated_files", "This replica's rotated log files kept.", Some(log.rotated_files)),
        ("api_log_rotated_bytes", "Bytes of this replica's rotated log files.", Some(log.rotated_bytes)),
        ("api_log_volume_free_bytes", "Bytes free to the service on the log's volume.", log.volume_free),
        ("api_log_volume_size_bytes", "Size of the log's file system.", log.volume_total),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            w.family(name, Kind::Gauge, help);
            w.sample(name, &[], v);
        }
    }
    #[rustfmt::skip] // a table: one row a metric
    let counters = [
        ("api_log_rotations_total", "Log files rotated at LOG_MAX_BYTES.", log.rotations),
        ("api_log_deleted_files_total", "Log files deleted (LOG_KEEP, LOG_MAX_AGE).", log.deleted_files),
        ("api_log_deleted_bytes_total", "The bytes of the log files deleted.", log.deleted_bytes),
    ];
    for (name, help, value) in counters {
        w.family(name, Kind::Counter, help);
        w.sample(name, &[], value);
    }
}

fn connections(w: &mut Writer, app: &App) {
    let cap = app.cap.snapshot(Instant::now());
    w.family(
        "api_connections_open",
        Kind::Gauge,
        "Connections holding a slot.",
    );
    w.sample("api_connections_open", &[], cap.open);
    w.family(
        "api_connections_max",
        Kind::Gauge,
        "The connection cap (MAX_CONNECTIONS).",
    );
    w.sample("api_connections_max", &[], app.cfg.max_connections);
    w.family(
        "api_connections_evicted_total",
        Kind::Counter,
        "Connections closed at the cap to make room: idle ones, or ones part-way through a head.",
    );
    w.sample(
        "api_connections_evicted_total",
        &[("kind", "idle")],
        cap.evicted_idle,
    );
    w.sample(
        "api_connections_evicted_total",
        &[("kind", "head")],
        cap.evicted_head,
    );
    w.family(
        "api_connections_at_cap_seconds_total",
        Kind::Counter,
        "Time spent with every connection slot taken.",
    );
    w.sample(
        "api_connections_at_cap_seconds_total",
        &[],
        cap.at_cap.as_secs_f64(),
    );
}

/// The standard process metrics: name, type and help, in the order of [`process`]'s values.
#[rustfmt::skip] // a table: one row a metric
const PROCESS: [(&str, Kind, &str); 6] = [
    ("process_cpu_seconds_total", Kind::Counter, "Total user and system CPU time spent in seconds."),
    ("process_resident_memory_bytes", Kind::Gauge, "Resident memory size in bytes."),
    ("process_virtual_memory_bytes", Kind::Gauge, "Virtual memory size in bytes."),
    ("process_open_fds", Kind::Gauge, "Number of open file descriptors."),
    ("process_max_fds", Kind::Gauge, "Maximum number of open file descriptors."),
    ("process_start_time_seconds", Kind::Gauge, "Start time of the process since unix epoch in seconds."),
];

fn process(w: &mut Writer) {
    let p = Process::read();
    let count = |n: Option<u64>| n.map(|n| n as f64);
    let values = [
        p.cpu_seconds,
        count(p.resident_bytes),
        count(p.virtual_bytes),
        count(p.open_fds),
        count(p.max_fds),
        p.start_time_seconds,
    ];
    for ((name, kind, help), value) in PROCESS.into_iter().zip(values) {
        if let Some(v) = value {
            w.family(name, kind, help);
            w.sample(name, &[], v);
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A constant 1 whose labels say something (`gauge` in the text format).
    Info,
}

/// Writes families and samples in the chosen format.
struct Writer {
    out: String,
    open_metrics: bool,
}

impl Writer {
    /// The `# HELP` and `# TYPE` lines of the family whose samples are named `name`.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (family, kind) = match (kind, self.open_metrics) {
            (Kind::Counter, true) => (name.strip_suffix("_total").unwrap_or(name), "counter"),
            (Kind::Counter, false) => (name, "counter"),
            (Kind::Gauge, _) => (name, "gauge"),
            (Kind::Histogram, _) => (name, "histogram"),
            (Kind::Info, true) => (name.strip_suffix("_info").unwrap_or(name), "info"),
            (Kind::Info, false) => (name, "gauge"),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {family} {help}\n# TYPE {family} {kind}");
    }

    /// One sample. Label values are the service's own (routes, methods, codes, the version),
    /// none of which needs escaping.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A histogram's buckets, sum and count, with `label` if any; `in_seconds` for one
    /// observed in microseconds, exposed in seconds.
    fn histogram(
        &mut self,
        name: &str,
        label: Option<(&str, &str)>,
        h: &Snapshot,
        in_seconds: bool,
    ) {
        let value = |n: u64| {
            if in_seconds {
                seconds(n)
            } else {
                n.to_string()
            }
        };
        let bucket = format!("{name}_bucket");
        let extra: Vec<(&str, &str)> = label.into_iter().collect();
        for (bound, n) in h.bounds.iter().zip(&h.cumulative) {
            let le = if in_seconds {
                seconds(*bound)
            } else {
                format!("{bound}.0")
            };
            let mut labels = extra.clone();
            labels.push(("le", &le));
            self.sample(&bucket, &labels, n);
        }
        let mut labels = extra.clone();
        labels.push(("le", "+Inf"));
        self.sample(&bucket, &labels, h.count);
        self.sample(&format!("{name}_sum"), &extra, value(h.sum));
        self.sample(&format!("{name}_count"), &extra, h.count);
    }
}

/// Microseconds as seconds, exactly (`50` is `0.00005`), without float rounding noise.
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return format!("{whole}.0");
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(50), "0.00005");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(10_000_000), "10.0");
        assert_eq!(seconds(0), "0.0");
        assert_eq!(seconds(1_000_001), "1.000001");
    }
}

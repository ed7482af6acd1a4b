-- wrk script for GET /health.
--
-- Only done() is defined, so wrk keeps its fast path (no Lua call per
-- request or per response).  done() prints one machine-readable line that
-- scripts/bench/bench.py parses:
--   BENCH {"requests":..., "p50_us":..., ...}
-- Non-2xx/3xx answers are counted by wrk itself (summary.errors.status).

wrk.method = "GET"
wrk.path = "/health"

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max))
end

-- wrk script for POST /events with a small JSON body.
--
-- Counts, per wrk thread, the requests sent and the answers by status, and
-- sums them over all threads in done() (wrk runs one Lua state per thread;
-- setup() runs in the main state and keeps a handle on each thread so that
-- done() can read the per-thread counters with thread:get()).
--
-- done() prints one machine-readable line parsed by scripts/bench/bench.py:
--   BENCH {"requests":..., "sent":..., "status":{"201":...}, ...}
--
-- "sent" exists because wrk stops at the deadline with requests still in
-- flight: the server may have written (and answered) those, but wrk never
-- counts their answers.  So after a run the log must hold at least as many
-- event records as 201s counted (no acknowledged event lost) and at most as
-- many as requests sent (no record without a request).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local req

function init(args)
   sent = 0
   s201 = 0
   s2xx = 0   -- other 2xx
   s4xx = 0
   s5xx = 0
   sother = 0
   req = wrk.format("POST", "/events",
                    { ["Content-Type"] = "application/json" },
                    '{"type":"bench.tick","data":{"n":1}}')
end

function request()
   sent = sent + 1
   return req
end

function response(status, headers, body)
   if status == 201 then
      s201 = s201 + 1
   elseif status >= 200 and status < 300 then
      s2xx = s2xx + 1
   elseif status >= 400 and status < 500 then
      s4xx = s4xx + 1
   elseif status >= 500 and status < 600 then
      s5xx = s5xx + 1
   else
      sother = sother + 1
   end
end

function done(summary, latency, requests)
   local t = { sent = 0, s201 = 0, s2xx = 0, s4xx = 0, s5xx = 0, sother = 0 }
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
         t[k] = t[k] + thread:get(k)
      end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d,' ..
      '"sent":%d,"status":{"201":%d,"2xx_other":%d,"4xx":%d,"5xx":%d,"other":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max,
      t.sent, t.s201, t.s2xx, t.s4xx, t.s5xx, t.sother))
end

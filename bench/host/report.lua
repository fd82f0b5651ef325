-- wrk script of every bench run: the method comes from BENCH_METHOD, and the figures are printed
-- as one JSON line that measure.py reads (wrk's own text output rounds them).
wrk.method = os.getenv("BENCH_METHOD") or "GET"

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "failed": %d, ' ..
    '"requests": %d, "bytes_per_request": %.1f, "seconds": %.2f}\n',
    summary.requests / seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, e.status + e.connect + e.read + e.write + e.timeout,
    summary.requests, summary.bytes / math.max(summary.requests, 1), seconds))
end

"""``management.bench_chain`` reads wrk's report right (the benchmark itself is not a test)."""

from __future__ import annotations

from management.bench_chain import parse_wrk

WRK = """\
Running 10s test @ http://127.0.0.1:20043/api/products/p-001
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   110.21ms   40.11ms 512.00ms   80.00%
    Req/Sec   145.10     20.00   190.00     70.00%
  Latency Distribution
     50%  102.50ms
     75%  130.00ms
     90%  160.00ms
     99%    1.20s
  1451 requests in 10.00s, 1.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    145.08
Transfer/sec:    122.88KB
"""


def test_parse_wrk_reads_rate_percentiles_and_failures() -> None:
    rps, p50, p99, requests, failed = parse_wrk(WRK)
    assert rps == 145.08
    assert p50 == 102.5
    assert p99 == 1200.0
    assert requests == 1451
    assert failed == 4 + 2 + 1

"""The benchmark harness (`make bench`, `make bench-quick`): see docs/benchmarks.md.

Modules: ``genrepo`` (deterministic medium/large repos), ``env`` (upstreams, proxies, git
clients of one session), ``rss`` (VmRSS sampler), ``load`` (info/refs + ls-refs load test),
``profile`` (py-spy), ``scenarios`` (the timed runs), ``report`` (table, JSON, plots, docs),
``run`` (the CLI: ``python -m bench.run``).
"""

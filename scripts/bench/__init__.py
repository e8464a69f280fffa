"""Benchmarks: each runs our path and a raw baseline side by side in one run and reports ratios.

    python -m scripts.bench discovery [--quick]   # (a)-(d): Resolve, Register, Watch, scale
    python -m scripts.bench rest                  # REST through the gateway vs gRPC, h2load
    python -m scripts.bench health --sizes 5000   # active health checks one replica sustains
    python -m scripts.bench sidecar               # config push over Connect vs raw gRPC fan-out

One module per benchmark (``discovery_*.py`` for the four discovery benchmarks, ``rest.py``,
``health.py``, ``sidecar_*.py`` for the sidecar distribution); shared helpers in ``common.py`` (statistics, /proc, constants),
``children.py`` (child processes), ``load.py`` (echo server, load loop), ``h2load.py`` and
``report.py``.
"""

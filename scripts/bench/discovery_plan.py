"""The sizes of a discovery benchmark run: the full plan and the ``--quick`` one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (full or --quick)."""

    h2load_requests: int
    h2load_warmup: int
    h2load_clients: int
    h2load_streams: int
    h2load_repeats: int
    resolve_instances: int
    register_n: int
    register_warmup: int
    register_concurrency: int
    register_rounds: int
    watch_counts: tuple[int, ...]
    watch_writes: dict[int, int]
    watch_interval_s: dict[int, float]
    watch_channels: int
    watch_processes: int
    scale_sizes: tuple[int, ...]
    scale_register_concurrency: int
    scale_register_budget_s: float
    resolve_calls: int
    resolve_batches: int
    resolve_warmup: int


FULL = Plan(
    h2load_requests=30_000,
    h2load_warmup=3_000,
    h2load_clients=8,
    h2load_streams=8,
    h2load_repeats=3,
    resolve_instances=10,
    register_n=3_000,
    register_warmup=100,
    register_concurrency=32,
    register_rounds=3,
    watch_counts=(1, 1_000),
    watch_writes={1: 200, 1_000: 40},
    watch_interval_s={1: 0.02, 1_000: 0.25},
    watch_channels=16,
    watch_processes=1,
    scale_sizes=(1_000, 100_000),
    scale_register_concurrency=64,
    scale_register_budget_s=300.0,
    resolve_calls=1_000,
    resolve_batches=5,
    resolve_warmup=200,
)
QUICK = Plan(
    h2load_requests=5_000,
    h2load_warmup=1_000,
    h2load_clients=8,
    h2load_streams=8,
    h2load_repeats=1,
    resolve_instances=10,
    register_n=500,
    register_warmup=50,
    register_concurrency=32,
    register_rounds=1,
    watch_counts=(1, 100),
    watch_writes={1: 50, 100: 20},
    watch_interval_s={1: 0.02, 100: 0.1},
    watch_channels=8,
    watch_processes=1,
    scale_sizes=(1_000, 10_000),
    scale_register_concurrency=64,
    scale_register_budget_s=60.0,
    resolve_calls=500,
    resolve_batches=3,
    resolve_warmup=100,
)

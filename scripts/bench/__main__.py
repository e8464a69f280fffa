"""``python -m scripts.bench NAME [options]``: runs one benchmark; ``NAME --help`` lists its
options. Run from the checkout's root (the benchmarks import ``lucid_cp`` and ``tests``)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "discovery": "scripts.bench.discovery",
    "rest": "scripts.bench.rest",
    "health": "scripts.bench.health",
    "sidecar": "scripts.bench.sidecar",
    "messaging": "scripts.bench.messaging",
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in BENCHMARKS:
        print(
            f"usage: python -m scripts.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr
        )
        return 2
    module = importlib.import_module(BENCHMARKS[args[0]])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())

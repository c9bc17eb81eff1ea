"""`python -m bench` (what `make bench` runs): every benchmark module in the package, the receiver first.

A benchmark module is one with a `main()`; `loadgen` is the receiver's load generator, not a benchmark.
Arguments go to the receiver benchmark (`python -m bench --rounds 5`); the others run with their own
defaults. The exit status is 1 if any benchmark failed (the receiver's correctness check, or a crash).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

FIRST = ("receiver", "http_clients")
# `soak` is a long run of its own (`make soak`), not part of `make bench`; `screenshots` is `make screenshots`.
NOT_BENCHMARKS = frozenset({"__main__", "loadgen", "soak", "screenshots"})


def benchmark_names() -> list[str]:
    present = {info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])}
    present -= NOT_BENCHMARKS
    return [name for name in FIRST if name in present] + sorted(present - set(FIRST))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    failed: list[str] = []
    for name in benchmark_names():
        try:
            module = importlib.import_module(f"bench.{name}")
        except ImportError as exc:
            print(f"(bench.{name} not run: {exc})")
            continue
        if not callable(getattr(module, "main", None)):
            continue
        print(f"\n== bench.{name} ==", flush=True)
        saved = sys.argv
        # Each module parses sys.argv itself; the receiver gets ours, the others their defaults.
        sys.argv = [f"python -m bench.{name}", *(argv if name == "receiver" else [])]
        started = time.monotonic()
        try:
            status = module.main()
        except SystemExit as exc:
            status = exc.code
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            sys.argv = saved
        if status not in (None, 0):
            failed.append(name)
        print(f"(bench.{name} took {time.monotonic() - started:.0f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

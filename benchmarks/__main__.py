"""Run the benchmarks: every ``benchmarks/bench_*.py`` that has a ``main()``, or the ones named.

    python -m benchmarks                      # all of them
    python -m benchmarks transport pipeline   # a subset (module names without ``bench_``)
    python -m benchmarks --quick --json out.json
    python -m benchmarks --list

Each module's ``main(argv)`` gets ``--quick`` and ``--json <per-module file>`` (plus any options after
``--``); the per-module results are merged into one JSON document under the module's short name. A module
that fails is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import console, machine_info

PACKAGE_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Short names of the benchmark modules present (``bench_gemm.py`` -> ``gemm``)."""
    return sorted(p.stem[len("bench_"):] for p in PACKAGE_DIR.glob("bench_*.py"))


def _call_main(module: Any, argv: list[str]) -> Any:
    fn = module.main
    try:
        takes_args = bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        takes_args = True
    if takes_args:
        return fn(argv)
    saved = sys.argv
    sys.argv = [module.__name__, *argv]
    try:
        return fn()
    finally:
        sys.argv = saved


def run(names: Sequence[str], quick: bool, json_path: str | None, extra: Sequence[str] = ()) -> int:
    """Run the named benchmark modules in order; returns the process exit status."""
    results: dict[str, Any] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ea-bench-json-") as tmp:
        for name in names:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            if not callable(getattr(module, "main", None)):
                console.print(f"[dim]skip {name}: bench_{name}.py has no main()[/dim]")
                continue
            part = Path(tmp) / f"{name}.json"
            argv = (["--quick"] if quick else []) + ["--json", str(part), *extra]
            console.rule(f"[bold]{name}[/bold]")
            t0 = time.monotonic()
            try:
                ret = _call_main(module, argv)
            except SystemExit as exc:  # an argparse error or an explicit exit inside the module
                if exc.code not in (0, None):
                    failed.append(name)
                    results[name] = {"error": f"exited with status {exc.code}"}
                continue
            except Exception as exc:
                traceback.print_exc()
                failed.append(name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            seconds = round(time.monotonic() - t0, 1)
            if part.exists():
                data = json.loads(part.read_text())
                data.pop("machine", None)
            elif isinstance(ret, dict):
                data = ret
            else:
                data = {}
            results[name] = {**data, "wall_seconds": seconds}
            console.print(f"[dim]{name}: {seconds} s[/dim]")
    if json_path:
        doc = {"machine": machine_info(), "quick": quick, "results": results}
        Path(json_path).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        console.print(f"wrote {json_path}")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmarks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    have = available()
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(have)})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer requests")
    p.add_argument("--json", metavar="PATH", help="write all results to PATH as one JSON document")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    if args.list:
        for n in have:
            print(n)
        return 0
    unknown = [n for n in args.names if n not in have]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(have)}")
    return run(args.names or have, args.quick, args.json, extra)


if __name__ == "__main__":
    sys.exit(main())

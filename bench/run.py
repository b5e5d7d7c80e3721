"""`python3 -m bench`: run the same workloads against this server and Synapse, then compare.

Each server gets a fresh PostgreSQL database made for the run (dropped at the
end unless --keep), runs alone while it is measured, and is stopped before
the next one starts. Results go to bench/results/<run>.json and <run>.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import report
from .client import RequestFailed
from .profile import Profiler, summarize
from .servers import (
    LABELS,
    REPO,
    Database,
    Server,
    ServerFailed,
    ensure_synapse,
    postgres_admin_dsn,
    prepare_ours,
    prepare_synapse,
)
from .workloads import WORKLOADS, Sizes, run_all

RESULTS = REPO / "bench" / "results"
SIZE_HELP = {
    "users": "users registered (at least what the other workloads need)",
    "rooms": "rooms set up with members in the room workload",
    "room_members": "members per such room, creator included",
    "messages": "messages sent in the throughput workload",
    "senders": "concurrent senders",
    "send_rooms": "rooms the senders send into",
    "fanout_clients": "long-polling /sync clients in the fan-out room",
    "fanout_messages": "messages sent to them",
    "fanout_interval": "seconds between fan-out messages",
    "sync_rooms": "rooms of the user whose initial sync is timed",
    "sync_room_messages": "messages in each of those rooms",
    "sync_repeats": "initial syncs timed (median reported)",
    "history_events": "messages in the room paged back through",
    "page_size": "events per /messages page",
    "concurrency": "parallel requests in set-up steps",
    "room_version": "room version of every room created",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--only", choices=("ours", "synapse", "both"), default="both")
    p.add_argument("--synapse-venv", type=Path,
                   default=Path(os.environ.get("BENCH_SYNAPSE_VENV", "~/synapse-venv")).expanduser(),
                   help="venv with Synapse in it, installed there if missing "
                        "(default: $BENCH_SYNAPSE_VENV or ~/synapse-venv)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated subset of " + ", ".join(WORKLOADS)
                        + " (registration always runs)")
    p.add_argument("--profile", action="store_true",
                   help="sample each server with py-spy and print what dominates its CPU")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    defaults = Sizes()
    for name in Sizes.field_names():
        value = getattr(defaults, name)
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=None,
                       help=f"{SIZE_HELP[name]} (default {value})")
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    for name in Sizes.field_names():
        value = getattr(args, name)
        if value is not None:
            setattr(sizes, name, value)
    return sizes


def _log(server: str) -> Callable[[str], None]:
    started = time.monotonic()

    def log(step: str) -> None:
        print(f"  [{server} +{time.monotonic() - started:5.1f}s] {step}", flush=True)

    return log


def _version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                              timeout=60, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


async def measure(server: Server, sizes: Sizes, only: list[str], profile: bool) -> dict:
    """Start the server, run the workloads, stop it; the database is the caller's."""
    log = _log(server.name)
    log(f"starting {server.label} on port {server.port} (database {server.database.name})")
    try:
        server.spawn()
        await server.wait_ready()
        log(f"ready after {server.startup_seconds:.1f}s")
        results = await run_all(server, sizes, log, only, profile)
    except RequestFailed:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    for name, path in results.get("profiles", {}).items():
        print(f"\n{server.label}, {name}: CPU profile of the timed part ({path})\n"
              f"{summarize(Path(path))}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    only = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.profile and not Profiler.available():
        raise SystemExit("--profile needs py-spy, which could not be installed")
    names = ["ours", "synapse"] if args.only == "both" else [args.only]
    run_id = time.strftime("%Y%m%d-%H%M%S")
    workroot = args.out / run_id
    admin_dsn = postgres_admin_dsn()
    synapse_python = ensure_synapse(args.synapse_venv) if "synapse" in names else None

    document: dict = {
        "run": run_id, "quick": args.quick, "sizes": sizes.as_dict(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "versions": {"ours": _version([sys.executable, "-m", "homeserver", "--version"]),
                     "ours_commit": _version(["git", "describe", "--always", "--dirty"])},
        "servers": {},
    }
    if synapse_python:
        document["versions"]["synapse"] = _version(
            [str(synapse_python), "-c", "import synapse; print(synapse.__version__)"])

    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {load:.1f} on {os.cpu_count()} CPUs); "
              "the numbers will be noisy", flush=True)
    started = time.monotonic()
    for name in names:
        workdir = workroot / name
        workdir.mkdir(parents=True, exist_ok=True)
        database = Database(admin_dsn, f"bench_{name}_{run_id.replace('-', '_')}")
        database.create(c_locale=(name == "synapse"))
        try:
            server = (prepare_synapse(workdir, database, synapse_python) if synapse_python
                      and name == "synapse" else prepare_ours(workdir, database))
            load_before = os.getloadavg()[0]
            document["servers"][name] = asyncio.run(measure(server, sizes, only, args.profile))
            document["servers"][name]["load_average"] = [round(load_before, 2),
                                                         round(os.getloadavg()[0], 2)]
        except (ServerFailed, RequestFailed) as e:
            print(f"error: {LABELS[name]}: {e}", file=sys.stderr)
            return 1
        finally:
            if not args.keep:
                database.drop()
    document["wall_s"] = round(time.monotonic() - started, 1)

    json_path = args.out / f"{run_id}.json"
    document["table"] = report.rows(document["servers"])
    report.write_json(json_path, document)
    print()
    print(report.table(document["servers"]))
    for note in report.correctness_notes(document["servers"]):
        print("note:", note)
    print(f"\nratio = ours / Synapse; total {document['wall_s']}s; raw results: {json_path}")
    if not args.no_chart:
        chart = args.out / f"{run_id}.png"
        if report.write_chart(chart, document["servers"]):
            print(f"chart: {chart}")
        else:
            print("chart: skipped (matplotlib could not be installed)")
    return 0

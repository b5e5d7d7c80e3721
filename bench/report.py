"""Turning results into a table, the issue's targets, a JSON file and a chart."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str
    label: str
    higher_is_better: bool
    target: float | None = None  # the bound on ours / Synapse

    def value(self, results: dict) -> float | None:
        """The result under the workload, at `key` (dots go deeper)."""
        value: Any = results.get(self.workload, {})
        for part in self.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f">= {self.target:.2f}" if self.higher_is_better else f"<= {self.target:.2f}"

    def met(self, ratio: float) -> bool:
        assert self.target is not None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target


METRICS = [
    Metric("register", "users_per_s", "registration, users/s (bcrypt 12)", True),
    Metric("rooms", "rooms_per_s", "room setup (create+invites+joins), rooms/s", True),
    Metric("send", "messages_per_s", "send throughput, messages/s", True, 3.0),
    Metric("send", "latency_p50_ms", "send latency p50, ms", False),
    Metric("send", "cpu_s_per_1000", "server CPU s per 1000 messages", False, 1 / 3),
    Metric("send", "db_cpu_s_per_1000", "PostgreSQL CPU s per 1000 messages", False),
    Metric("fanout", "p50_ms", "fan-out latency p50, ms", False),
    Metric("fanout", "p99_ms", "fan-out latency p99, ms", False, 1 / 3),
    Metric("initial_sync", "seconds", "initial sync, s", False, 1 / 3),
    Metric("initial_sync", "sliding.first_window_s", "sliding sync, first 20 rooms, s", False),
    Metric("initial_sync", "sliding.rest_s", "sliding sync, the other rooms, s", False),
    Metric("pagination", "page_ms_p50", "back-pagination per page p50, ms", False),
    Metric("process", "peak_rss_mb", "peak RSS, MiB", False, 1 / 2),
    Metric("", "startup_s", "startup on an empty database, s", False),
]


def _value(metric: Metric, results: dict) -> float | None:
    if not metric.workload:
        value = results.get(metric.key)
        return float(value) if isinstance(value, (int, float)) else None
    return metric.value(results)


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def rows(servers: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per metric: both values, ours / Synapse, and the target's verdict."""
    ours, synapse = servers.get("ours", {}), servers.get("synapse", {})
    out = []
    for metric in METRICS:
        a, b = _value(metric, ours), _value(metric, synapse)
        ratio = a / b if a is not None and b not in (None, 0.0) else None
        verdict = ""
        if metric.target is not None and ratio is not None:
            verdict = "met" if metric.met(ratio) else "NOT met"
        out.append({"metric": metric.label, "ours": a, "synapse": b, "ratio": ratio,
                    "target": metric.target_text(), "verdict": verdict,
                    "higher_is_better": metric.higher_is_better})
    return out


def table(servers: dict[str, dict]) -> str:
    """The comparison as a plain-text (and Markdown-compatible) table."""
    header = ["metric", "ours", "Synapse", "ours/Synapse", "target", ""]
    lines = [header, ["---"] * len(header)]
    for row in rows(servers):
        if row["ours"] is None and row["synapse"] is None:
            continue
        lines.append([row["metric"], _fmt(row["ours"]), _fmt(row["synapse"]),
                      _fmt(row["ratio"]), row["target"], row["verdict"]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for line in lines:
        cells = [("-" * widths[i] if c == "---" else c.ljust(widths[i])) for i, c in enumerate(line)]
        text.append("| " + " | ".join(cells) + " |")
    return "\n".join(text)


def correctness_notes(servers: dict[str, dict]) -> list[str]:
    """Anything that makes a number suspect: lost or repeated deliveries, short pages."""
    notes = []
    for name, results in servers.items():
        fan = results.get("fanout", {})
        if fan.get("missed") or fan.get("duplicated"):
            notes.append(f"{name}: fan-out missed {fan['missed']} and duplicated "
                         f"{fan['duplicated']} deliveries")
        page = results.get("pagination", {})
        if page and "messages_seen" in page and page["messages_seen"] != page["events"]:
            notes.append(f"{name}: back-pagination saw {page['messages_seen']} of "
                         f"{page['events']} messages")
        sync = results.get("initial_sync", {})
        if "rooms_returned" in sync and sync["rooms_returned"] != sync["rooms"]:
            notes.append(f"{name}: initial sync returned {sync['rooms_returned']} of "
                         f"{sync['rooms']} rooms")
        for workload, value in results.items():
            if isinstance(value, dict) and "skipped" in value:
                notes.append(f"{name}: {workload} skipped ({value['skipped']})")
    return notes


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def _pyplot() -> Any:
    """matplotlib's pyplot, installing matplotlib into this environment once if missing."""
    try:
        import matplotlib
    except ImportError:
        print("installing matplotlib for the chart ...", flush=True)
        install = [sys.executable, "-m", "pip", "install", "-q", "matplotlib"]
        if subprocess.run(install, check=False).returncode != 0:
            return None
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_chart(path: Path, servers: dict[str, dict]) -> bool:
    """Paired bars per metric, each panel titled with the ratio and target."""
    plt = _pyplot()
    if plt is None:
        return False
    shown = [r for r in rows(servers) if r["ours"] is not None or r["synapse"] is not None]
    cols = 4
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, shown):
        values = [row["ours"] or 0.0, row["synapse"] or 0.0]
        bars = ax.bar(["ours", "Synapse"], values, color=["#2b8cbe", "#bdbdbd"])
        ax.bar_label(bars, labels=[_fmt(row["ours"]), _fmt(row["synapse"])], fontsize=8)
        title = row["metric"]
        if row["ratio"] is not None:
            title += f"\nratio {_fmt(row['ratio'])}"
            if row["target"]:
                title += f" (target {row['target']}: {row['verdict']})"
        ax.set_title(title, fontsize=8.5,
                     color="#b30000" if row["verdict"] == "NOT met" else "black")
        ax.tick_params(labelsize=8)
        ax.margins(y=0.2)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("homeserver vs Synapse (PostgreSQL, single process)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

"""Sampling a server under test with py-spy (`--profile`), and saying what dominates.

py-spy attaches to the running process, so the CPU and memory the bench
reads stay the server's own. It samples on-CPU stacks only: time spent
waiting for PostgreSQL does not show, which is what one wants when asking
where the server's CPU goes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


class Profiler:
    """`py-spy record` on one process, writing collapsed stacks to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        if shutil.which("py-spy"):
            return True
        print("installing py-spy for --profile ...", flush=True)
        install = [sys.executable, "-m", "pip", "install", "-q", "py-spy"]
        return subprocess.run(install, check=False).returncode == 0 and shutil.which("py-spy") is not None

    def start(self, pid: int) -> None:
        self._process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--nonblocking", "-o", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Stop sampling; py-spy writes its file on SIGINT."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: lines apart, one function."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


def summarize(path: Path, top: int = 15) -> str:
    """The functions with the most samples, inclusive and self, as text."""
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        self_time[frames[-1]] += count
    if not total:
        return "no samples"
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", self_time)):
        out.append(f"top {top} by {title} samples:")
        for name, count in counter.most_common(top):
            out.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(out)

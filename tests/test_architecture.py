"""The dependency rule and the packaging, checked on the source tree.

* The core (``hopchain/``) imports neither trio nor sockets nor the shells;
  ``cli.py`` and ``__main__.py`` are the entry points and may.
* Only ``hopchain/crypto/primitives.py`` touches PyNaCl.
* The relay shell never imports the client shell; the client shell uses only
  the shared shell modules of ``hopchain.relay``.
* A built wheel installs exactly one top-level package, ``hopchain``.
"""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {"cli.py", "__main__.py"}
SHARED_SHELL = {
    "hopchain.relay",
    "hopchain.relay.net",
    "hopchain.relay.link",
    "hopchain.relay.pump",
    "hopchain.relay.stream",
    "hopchain.relay.dirclient",
    "hopchain.relay.keystore",
}


def imports_of(path: Path) -> set[str]:
    """Every module name a file imports (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def core_files() -> list[Path]:
    return [p for p in (ROOT / "hopchain").rglob("*.py") if p.name not in ENTRY_POINTS]


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_does_no_io_and_imports_no_shell(path: Path) -> None:
    forbidden = ("trio", "socket", "asyncio", "hopchain.relay", "hopchain.client")
    bad = {
        name
        for name in imports_of(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    }
    assert bad == set()


def test_only_primitives_imports_nacl() -> None:
    users = {
        str(p.relative_to(ROOT))
        for folder in ("hopchain", "relay", "client")
        for p in (ROOT / folder).rglob("*.py")
        if any(n == "nacl" or n.startswith("nacl.") for n in imports_of(p))
    }
    assert users == {"hopchain/crypto/primitives.py"}


def test_relay_shell_never_imports_the_client_shell() -> None:
    for path in (ROOT / "relay").rglob("*.py"):
        assert not [n for n in imports_of(path) if n.startswith("hopchain.client")]


def test_client_shell_uses_only_shared_relay_modules() -> None:
    for path in (ROOT / "client").rglob("*.py"):
        used = {
            n
            for n in imports_of(path)
            if n == "hopchain.relay" or n.startswith("hopchain.relay.")
        }
        modules = {
            n for n in used if n in SHARED_SHELL or n.rsplit(".", 1)[0] in SHARED_SHELL
        }
        assert used == modules, f"{path.name} imports {used - modules}"


def test_wheel_installs_only_the_hopchain_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("hopchain-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith("top_level.txt")]
        assert archive.read(top_level).decode().split() == ["hopchain"]
    (dist_info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert {n.split("/")[0] for n in names} == {"hopchain", dist_info}
    assert "hopchain/relay/node.py" in names
    assert "hopchain/client/node.py" in names
    assert "hopchain/py.typed" in names

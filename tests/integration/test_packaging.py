"""Packaging: the built wheel holds every package of the source tree (installed in a fresh
venv, each one imports from there — an editable install would hide a sub-package missing
from setup.cfg), and modcoord installs under one parent package, so PyPI's ``supervisor``
(supervisord) and ``actors`` can live in the same environment without shadowing ours.
The wheel's metadata: pytest and its plugins only behind the ``test``/``dev`` extras, the
MIT LICENSE in its dist-info, the systemd unit in the package data, the Python classifiers."""

from __future__ import annotations

import email.parser
import json
import re
import shutil
import site
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the build reads: setup.cfg maps modcoord.<name> to these top-level folders.
SOURCE_DIRS = ("actors", "supervisor", "configs")
SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE")


def source_modules() -> list[str]:
    """Every module of the source tree as installed (``modcoord.supervisor.cli.status``...),
    packages included; ``__main__`` modules are left out (importing them runs them)."""
    names: list[str] = []
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "__pycache__" in parts or parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(("modcoord", *parts)))
    return names


IMPORT_ALL = """
import importlib, json, sys
out = {}
for name in json.loads(sys.argv[1]):
    try:
        out[name] = importlib.import_module(name).__file__
    except Exception as exc:
        out[name] = f"ERROR {type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source tree, as from a fresh clone (no build/ or
    egg-info of the worktree); symlinks in the tree are copied as the files they point to.
    Skips when the build requirements cannot be installed."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCE_FILES:
        shutil.copy(ROOT / name, src / name)
    for name in SOURCE_DIRS:
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            str(src), "-w", str(wheels)],
                           capture_output=True, text=True, timeout=240, cwd=tmp_path)
    if build.returncode != 0 and "Could not find a version" in build.stderr:
        pytest.skip(f"build requirements unavailable: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    [built] = wheels.glob("modcoord-*.whl")
    return built


def _name(requirement: str) -> str:
    """The distribution name of a ``Requires-Dist`` value, lower-cased."""
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()


def _metadata(wheel: Path) -> tuple[Message, list[str]]:
    """The wheel's parsed ``*.dist-info/METADATA`` and the names of its files."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(meta).decode()), names


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_metadata_license_test_extras_unit_and_classifiers(wheel: Path) -> None:
    meta, names = _metadata(wheel)
    # pytest and its plugins are test dependencies: every Requires-Dist naming one is
    # conditional on an extra ("test" and "dev"), none is installed with modcoord.
    requires = meta.get_all("Requires-Dist") or []
    test_only = ("pytest", "pytest-timeout", "hypothesis")
    for req in requires:
        if _name(req) in test_only:
            assert re.search(r"extra\s*==", req), f"runtime dependency: {req!r}"
    for extra in ("test", "dev"):
        assert extra in (meta.get_all("Provides-Extra") or [])
        wanted = {_name(r) for r in requires if re.search(rf"extra\s*==\s*.{extra}.", r)}
        assert set(test_only) <= wanted, (extra, requires)

    # The otlp exporter: an optional extra, and an entry point of the exporters group.
    assert "otel" in (meta.get_all("Provides-Extra") or [])
    otel = {_name(r) for r in requires if re.search(r"extra\s*==\s*.otel.", r)}
    assert otel == {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}, requires
    with zipfile.ZipFile(wheel) as zf:
        [eps] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "otlp = modcoord.supervisor.daemon.otlp:OtlpExporter" in zf.read(eps).decode()

    # The license: declared, named as a License-File and shipped in the dist-info.
    assert meta["License"] == "MIT"
    assert "License :: OSI Approved :: MIT License" in (meta.get_all("Classifier") or [])
    assert "LICENSE" in (meta.get_all("License-File") or [])
    [dist_info] = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    licenses = [n for n in names if n.startswith(dist_info + "/") and n.endswith("LICENSE")]
    assert licenses, f"no LICENSE in {dist_info}: {names}"
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
        # The systemd unit, as the file itself (the tree holds it as a symlink).
        unit = "modcoord/supervisor/daemon/data/modcoord.service"
        assert unit in names
        assert zf.read(unit) == (ROOT / "scripts" / "modcoord.service").read_bytes()
        # The lnav format file (``modcoord logs --lnav-format-path`` prints where).
        lnav = "modcoord/supervisor/daemon/data/modcoord.lnav.json"
        assert lnav in names
        assert zf.read(lnav) == (ROOT / "supervisor" / "daemon" / "data" /
                                 "modcoord.lnav.json").read_bytes()
        # The Grafana dashboard (``modcoord grafana`` prints it).
        grafana = "modcoord/supervisor/daemon/data/grafana/modcoord.json"
        assert grafana in names
        assert zf.read(grafana) == (ROOT / "supervisor" / "daemon" / "data" / "grafana" /
                                    "modcoord.json").read_bytes()
        # The dashboard page's files and their licence note, every one of them.
        page = ROOT / "supervisor" / "daemon" / "data" / "dashboard"
        for asset in sorted(page.iterdir()):
            name = f"modcoord/supervisor/daemon/data/dashboard/{asset.name}"
            assert zf.read(name) == asset.read_bytes(), name

    # Python versions: the classifier names the version the suite runs on, and no other
    # (a version no test covers is not claimed).
    classifiers = set(meta.get_all("Classifier") or [])
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert meta["Requires-Python"] == ">=3.10"
    versions = {c for c in classifiers if c.startswith("Programming Language :: Python :: 3.")}
    assert versions == {f"Programming Language :: Python :: 3.{sys.version_info.minor}"}, versions


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_in_a_fresh_venv_imports_every_module_of_the_source_tree(
        wheel: Path, tmp_path: Path) -> None:
    # A fresh venv without pip: the wheel goes in with this pip, without its dependencies;
    # those are found in this environment's site-packages through a .pth file (paths only:
    # the .pth files there, such as the editable install's finder, are not run).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                              "--no-deps", "--no-index", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr[-3000:]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    Path(purelib, "deps-from-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    modules = source_modules()
    assert {"modcoord.actors", "modcoord.supervisor.protocol", "modcoord.supervisor.client",
            "modcoord.supervisor.daemon", "modcoord.supervisor.cli",
            "modcoord.configs"} <= set(modules)
    result = subprocess.run([str(python), "-c", IMPORT_ALL, json.dumps(modules)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, str] = json.loads(result.stdout)
    failed = {name: where for name, where in found.items()
              if not where.startswith(purelib + "/modcoord/")}
    assert not failed, f"not importable from the installed wheel: {failed}"

    # The package data and the console script come with it.
    installed = Path(purelib, "modcoord")
    assert {p.name for p in (installed / "configs").glob("*.yaml")} == {
        p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert (installed / "supervisor" / "py.typed").exists()
    assert (installed / "actors" / "py.typed").exists()
    assert (installed / "supervisor" / "daemon" / "data" / "modcoord.service").is_file()
    lnav = subprocess.run([str(venv / "bin" / "modcoord"), "logs", "--lnav-format-path"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin"})
    assert lnav.returncode == 0, lnav.stderr[-3000:]
    assert Path(lnav.stdout.strip()).resolve() == (
        installed / "supervisor" / "daemon" / "data" / "modcoord.lnav.json").resolve()
    json.loads(Path(lnav.stdout.strip()).read_text())
    grafana = subprocess.run([str(venv / "bin" / "modcoord"), "grafana"], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert grafana.returncode == 0, grafana.stderr[-3000:]
    assert json.loads(grafana.stdout)["uid"] == "modcoord-daemon"
    cli = subprocess.run([str(venv / "bin" / "modcoord"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "status" in cli.stdout
    # The shell completion scripts come as package data and print without shtab (this
    # venv has no dependencies at all).
    for shell, name in (("bash", "modcoord.bash"), ("zsh", "_modcoord")):
        printed = subprocess.run([str(venv / "bin" / "modcoord"), "completion", shell],
                                 capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                 env={"PATH": "/usr/bin:/bin"})
        assert printed.returncode == 0, printed.stderr[-3000:]
        assert printed.stdout == (
            ROOT / "supervisor" / "cli" / "completions" / name).read_text()

CHECK = """
import importlib.util
import supervisor
import modcoord.supervisor, modcoord.actors
from modcoord.supervisor import ModcoordError, connect
from supervisor.options import ServerOptions  # supervisord's own module
# PyPI's 'actors' does not even import on its own; it only must not shadow ours.
assert importlib.util.find_spec('actors').origin.startswith(%r)
assert modcoord.actors.ManagedActor and ModcoordError and connect
print('ok', supervisor.__file__, modcoord.supervisor.__file__)
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pypi_supervisor_and_actors_do_not_shadow_ours(tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), "supervisor", "actors"],
        capture_output=True, text=True, timeout=240,
    )
    if install.returncode != 0:
        pytest.skip(f"package registry unreachable: {install.stderr[-300:]}")
    result = subprocess.run(
        [sys.executable, "-c", CHECK % str(target)], capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert str(target) in result.stdout

"""Build the offline installer archive ``dist/ctedge-<version>-linux_<arch>.tar.gz``.

The archive holds the ctedge wheel and the wheels of its edge dependencies (read from
pyproject.toml at build time; on x86-64 also the ``openvino`` extra, see :data:`ARCH_EXTRAS`) for each target Python, a lock file pinning every wheel by
version and sha256, pip's own wheel (install.sh runs pip from it), the model bundles, the
device profiles, one sample study, ``install.sh`` and ``SHA256SUMS`` for the files the lock
does not cover. Needs the package index (or pip's configured mirrors) at build time only. Each
phase prints a numbered line with its counts (``[2/5] downloading wheels for CPython 3.11 on x86_64
(12 requirements and their dependencies)``) and, where it finds them, a detail line under it.

    python installer/build_bundle.py --arch x86_64 --python 3.11 --python 3.12 --out dist
    python installer/build_bundle.py --native --out /tmp/bundle     # this machine's Python only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANYLINUX = "manylinux_2_28"          # newest glibc the target may need: Debian 10+, Ubuntu 20.04+, RHEL 8+
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
SAMPLE = ROOT / "samples" / "covid-ct-md" / "COVID-19_P002"
ARCH_EXTRAS = {"x86_64": ["openvino"]}
"""Extras the archive of a CPU includes: OpenVINO runs int8 faster than LiteRT on AVX2-only x86-64 (docs/benchmarks.md)."""
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-.+\.whl$")


class BuildError(Exception):
    """The archive cannot be built; the message names the step and the cause."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the archive (default: dist/)")
    parser.add_argument("--arch", choices=["x86_64", "aarch64"], default=platform.machine(),
                        help="target CPU (default: this machine's)")
    parser.add_argument("--python", action="append", metavar="X.Y",
                        help=f"target CPython version, repeatable (default: {' '.join(PYTHONS)})")
    parser.add_argument("--native", action="store_true",
                        help="only this interpreter's Python and platform (quick builds for tests)")
    args = parser.parse_args(argv)
    if args.native and (args.python or args.arch != platform.machine()):
        parser.error("--native builds for this machine's Python and CPU; drop --python/--arch")
    pythons = [f"{sys.version_info[0]}.{sys.version_info[1]}"] if args.native else (args.python or PYTHONS)
    try:
        archive = build(args.out, args.arch, pythons, native=args.native)
    except BuildError as exc:
        print(f"build_bundle: error: {exc}", file=sys.stderr)
        return 1
    print(f"{archive} ({archive.stat().st_size / 2**20:.1f} MiB)")
    return 0


def build(out: Path, arch: str, pythons: list[str], native: bool = False) -> Path:
    """Build the archive into ``out`` and return its path."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = project["version"]
    requirements = project["dependencies"] + [r for extra in ARCH_EXTRAS.get(arch, [])
                                              for r in project["optional-dependencies"][extra]]
    name = f"ctedge-{version}-linux_{arch}"
    phases = iter(range(1, len(pythons) + 4))
    total = len(pythons) + 3
    with tempfile.TemporaryDirectory(prefix="ctedge-bundle-") as tmp:
        stage = Path(tmp) / name
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        downloads = Path(tmp) / "downloads"
        progress(next(phases), total, "building the ctedge wheel")
        own = build_own_wheel(Path(tmp) / "own")
        per_python = {}
        for py in pythons:
            target = "this machine's Python" if native else f"CPython {py}"
            progress(next(phases), total, f"downloading wheels for {target} on {arch} "
                                          f"({len(requirements)} requirements and their dependencies)")
            per_python[py] = download(requirements, py, arch, native, downloads / f"cp{py.replace('.', '')}-{arch}")
            detail(f"{len(per_python[py])} wheels, {_mib(per_python[py]):.1f} MiB")
        for files in per_python.values():
            for f in files:
                shutil.copy2(f, wheels / f.name)
        shutil.copy2(own, wheels / own.name)
        progress(next(phases), total, f"assembling: {sum(1 for _ in wheels.iterdir())} wheels, pip, the lock, "
                                      "model bundles, device profiles, the sample study")
        tools = stage / "tools"
        tools.mkdir()
        pip_wheel = download(["pip"], pythons[-1], arch, native, downloads / "pip")[0]
        shutil.copy2(pip_wheel, tools / pip_wheel.name)
        (stage / "requirements.lock").write_text(lock_text(per_python, own, requirements, arch, native))
        copy_payload(stage)
        detail(f"{_count(stage / 'models')} model bundles, {_count(stage / 'profiles')} profiles, "
               f"{_count(stage / 'sample', '*.dcm')} sample DICOM files")
        (stage / "BUNDLE.json").write_text(json.dumps({
            "name": "ctedge", "version": version, "arch": arch, "pythons": pythons, "manylinux": MANYLINUX,
            "native_only": native, "built": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pip": pip_wheel.name}, indent=2) + "\n")
        write_sums(stage)
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"{name}.tar.gz"
        files = [p for p in stage.rglob("*") if p.is_file()]
        progress(next(phases), total, f"compressing {len(files)} files ({_mib(files):.1f} MiB) into {archive}")
        with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
            tar.add(stage, arcname=name, filter=_normalise)
    return archive


def progress(phase: int, total: int, text: str) -> None:
    """One numbered phase line on stdout, at once (a long phase is not silent)."""
    print(f"[{phase}/{total}] {text}", flush=True)


def detail(text: str) -> None:
    """A line under the current phase: what it found."""
    print(f"      {text}", flush=True)


def _mib(files: list[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 2**20


def _count(folder: Path, pattern: str = "*") -> int:
    """Entries of ``folder`` (``*``: its children; another pattern: matching files at any depth)."""
    return sum(1 for _ in (folder.iterdir() if pattern == "*" else folder.rglob(pattern))) if folder.is_dir() else 0


def build_own_wheel(dest: Path) -> Path:
    """The ctedge wheel, built from a clean copy of this checkout (a stale build/ folder could
    otherwise put deleted modules into the wheel)."""
    source = dest / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "out"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"building the ctedge wheel failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return next(dest.glob("ctedge-*.whl"))


def platform_options(arch: str) -> list[str]:
    """pip --platform options for every manylinux tag up to MANYLINUX (pip < 24 does not expand them itself)."""
    newest = int(MANYLINUX.rsplit("_", 1)[1])
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 16, -1)] + [f"manylinux2014_{arch}"]
    return [option for tag in tags for option in ("--platform", tag)]


def download(requirements: list[str], python: str, arch: str, native: bool, dest: Path) -> list[Path]:
    """Binary wheels resolving ``requirements`` for one CPython version and CPU, into the new folder ``dest``."""
    target = [] if native else ["--python-version", python, "--implementation", "cp",
                                "--abi", f"cp{python.replace('.', '')}", *platform_options(arch)]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(dest),
           *target, *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or [""]
        raise BuildError(f"no wheels for CPython {python} on {arch} (pip download exit {proc.returncode}): {last[0]}")
    return sorted(dest.glob("*.whl"))


def lock_text(per_python: dict[str, list[Path]], own: Path, requirements: list[str], arch: str, native: bool) -> str:
    """A pip requirements file pinning every wheel by version and sha256 (``--require-hashes``).

    A project whose version differs between target Pythons gets one line per version with a
    ``python_version`` marker."""
    pythons = list(per_python)
    seen: dict[tuple[str, str], tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for py, files in per_python.items():
        for f in files + [own]:
            m = WHEEL_NAME.match(f.name)
            if not m:
                raise BuildError(f"{f}: not a wheel file name")
            key = (m["name"].lower().replace("_", "-"), m["version"])
            seen[key][0].add(py)
            seen[key][1].add(sha256(f))
    target = "this machine's Python" if native else f"CPython {', '.join(pythons)} on {MANYLINUX}_{arch}"
    lines = ["# ctedge offline install lock: every wheel in wheels/ by version and sha256.",
             f"# Generated by installer/build_bundle.py from pyproject.toml's dependencies for {target}:",
             *(f"#   {r}" for r in requirements),
             "# install.sh installs it with: pip install --no-index --find-links wheels --require-hashes -r requirements.lock"]
    for (project, version), (pys, hashes) in sorted(seen.items()):
        marker = "" if pys == set(pythons) else " ; " + " or ".join(f'python_version == "{p}"' for p in sorted(pys))
        lines.append(f"{project}=={version}{marker} \\")
        lines.append(" \\\n".join(f"    --hash=sha256:{h}" for h in sorted(hashes)))
    return "\n".join(lines) + "\n"


def copy_payload(stage: Path) -> None:
    """install.sh, the unit templates, model bundles, device profiles and the sample study."""
    here = Path(__file__).resolve().parent
    shutil.copy2(here / "install.sh", stage / "install.sh")
    shutil.copytree(here, stage / "installer", ignore=shutil.ignore_patterns("__pycache__", "build_bundle.py", "install.sh"))
    for card in sorted((ROOT / "edge" / "models").glob("*/model.json")):
        shutil.copytree(card.parent, stage / "models" / card.parent.name, ignore=shutil.ignore_patterns("*.onnx"))
    profiles = stage / "profiles"
    profiles.mkdir()
    for src in sorted((ROOT / "firmware_config").glob("*.yaml")):
        # The profiles name the bundle relative to the repository (../edge/models/X); in the archive
        # and under /opt/ctedge the bundles sit in ../models/X.
        text = re.sub(r"(?m)^(\s*bundle:\s*)\.\./edge/models/", r"\1../models/", src.read_text())
        (profiles / src.name).write_text(text)
    shutil.copytree(SAMPLE, stage / "sample" / SAMPLE.name)
    shutil.copy2(SAMPLE.parent / "README.md", stage / "sample" / "README.md")


def write_sums(stage: Path) -> None:
    """SHA256SUMS for every file except the wheels, which the lock covers."""
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.parent != stage / "wheels" and p.name != "SHA256SUMS")
    (stage / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(stage)}\n" for p in files))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


if __name__ == "__main__":
    sys.exit(main())

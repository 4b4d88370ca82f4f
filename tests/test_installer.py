"""The offline installer: build a native-Python archive, install it with --prefix with the network cut
off, run doctor and predict from the installed copy, upgrade without touching data, reject a tampered
wheel, uninstall keeping patient data."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from tests.helpers.paths import REPO

pytestmark = pytest.mark.external  # builds and installs the offline installer archive

INSTALLER = REPO / "installer"
SERVE_UNITS = ("ctedge-serve.service.in", "ctedge-watch.service.in")
TOKEN = "0123456789abcdef0123456789abcdef"


def offline_prefix() -> list[str]:
    """A command prefix that cuts the network: a new network namespace as root, else nothing
    (install.sh never uses an index: pip runs with --no-index and only the archive's wheels)."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n"]
    return []


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return env | {"PIP_NO_INDEX": "1"}


def run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*offline_prefix(), *map(str, cmd)], capture_output=True, text=True, env=offline_env(),
                          timeout=300, **kw)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The unpacked native-only archive (built once per test run)."""
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, INSTALLER / "build_bundle.py", "--native", "--out", out],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    [tar] = out.glob("ctedge-*-linux_*.tar.gz")
    with tarfile.open(tar) as t:
        t.extractall(out, filter="tar")
    [root] = [p for p in out.iterdir() if p.is_dir()]
    return root


@pytest.fixture(scope="module")
def installed(archive, tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("root")
    proc = run([archive / "install.sh", "--prefix", prefix])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Next steps" in proc.stdout
    return prefix


def test_archive_holds_lock_wheels_models_profiles_and_installer(archive):
    lock = (archive / "requirements.lock").read_text()
    wheels = sorted(p.name for p in (archive / "wheels").glob("*.whl"))
    assert any(w.startswith("ctedge-") for w in wheels)
    assert not any(w.lower().startswith(("tensorflow", "tf_keras")) for w in wheels)
    shipped = {hashlib.sha256(w.read_bytes()).hexdigest() for w in (archive / "wheels").glob("*.whl")}
    assert set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock)) == shipped   # the lock pins exactly what ships
    for dep in ("numpy", "ai-edge-litert", "pydicom", "waitress"):
        assert f"\n{dep}==" in lock
    assert (archive / "models" / "demo" / "model.json").is_file()
    assert {p.stem for p in (archive / "profiles").glob("*.yaml")} >= {"cpu-minipc", "coral-edgetpu", "jetson-nano"}
    assert os.access(archive / "install.sh", os.X_OK)


def test_install_with_network_cut_makes_owner_only_folders_and_absolute_profile(installed):
    if offline_prefix():       # the install really ran without a network
        probe = run([sys.executable, "-c", "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"])
        assert probe.returncode != 0
    for d in ("inbox", "outbox", "results"):
        assert stat.S_IMODE((installed / "srv/ctedge" / d).stat().st_mode) == 0o700
    assert stat.S_IMODE((installed / "etc/ctedge/ctedge.env").stat().st_mode) == 0o640
    profile = yaml.safe_load((installed / "etc/ctedge/ctedge.yaml").read_text())
    assert profile["model"]["bundle"] == str(installed / "opt/ctedge/current/models/demo")
    assert profile["server"]["results_dir"] == str(installed / "srv/ctedge/results")
    assert profile["server"]["host"] == "127.0.0.1"


def ctedge(installed: Path) -> Path:
    return installed / "opt/ctedge/current/venv/bin/ctedge"


def doctor(installed: Path) -> subprocess.CompletedProcess:
    return run([ctedge(installed), "doctor", "--config", installed / "etc/ctedge/ctedge.yaml",
                "--folder", installed / "srv/ctedge/inbox", "--folder", installed / "srv/ctedge/outbox"])


def test_doctor_predict_rerun_and_upgrade_from_installed_copy(installed, archive):
    conf = installed / "etc/ctedge/ctedge.yaml"
    first = doctor(installed)
    assert first.returncode == 1, first.stdout
    assert "[FAIL] api token" in first.stdout and "[FAIL] login users" in first.stdout
    assert "[  ok] model: cnn-bilstm-demo" in first.stdout

    # The operator's steps: a token, a login, a free port (an edit the upgrade must keep).
    env_file = installed / "etc/ctedge/ctedge.env"
    env_file.write_text(env_file.read_text().replace("CTEDGE_API_TOKEN=", f"CTEDGE_API_TOKEN={TOKEN}"))
    add = run([ctedge(installed), "serve", "--config", conf, "--add-user", "radiologist"], input="correct horse battery\n")
    assert add.returncode == 0, add.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf.write_text(conf.read_text().replace("port: 8080", f"port: {port}"))
    ready = doctor(installed)
    assert ready.returncode == 0, ready.stdout
    assert ready.stdout.rstrip().endswith("READY")

    predict = run([ctedge(installed), "predict", installed / "opt/ctedge/current/sample/COVID-19_P002", "--config", conf])
    assert predict.returncode == 0, predict.stderr
    assert "Verdict: " in predict.stdout and "Model: cnn-bilstm-demo" in predict.stdout

    (installed / "srv/ctedge/inbox/study-1").mkdir()
    (installed / "srv/ctedge/inbox/study-1/slice.dcm").write_bytes(b"not really dicom")
    (installed / "srv/ctedge/outbox/result.json").write_text("{}")
    config_files = [installed / "etc/ctedge/ctedge.yaml", installed / "etc/ctedge/ctedge.env"]
    before = snapshot(installed / "srv", config_files)
    again = run([archive / "install.sh", "--prefix", installed])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already installed" in again.stdout
    assert snapshot(installed / "srv", config_files) == before
    assert "Kept your profile" in again.stdout

    old_release = (installed / "opt/ctedge/current").resolve()
    upgrade = run([newer_copy(archive, installed.parent / "newer"), "--prefix", installed])
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "Installing ctedge" in upgrade.stdout
    assert (installed / "opt/ctedge/current").resolve() != old_release and not old_release.exists()
    assert snapshot(installed / "srv", config_files) == before
    assert doctor(installed).returncode == 0


def newer_copy(archive: Path, dest: Path) -> Path:
    """A copy of the archive that counts as another release (its lock differs); returns its install.sh."""
    shutil.copytree(archive, dest, symlinks=True)
    lock = dest / "requirements.lock"
    lock.write_text(lock.read_text() + "# next release\n")
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    sums = (dest / "SHA256SUMS").read_text().splitlines()
    (dest / "SHA256SUMS").write_text("".join((f"{digest}  requirements.lock" if line.endswith("  requirements.lock")
                                              else line) + "\n" for line in sums))
    return dest / "install.sh"


def snapshot(root: Path, files: list[Path]) -> dict[str, tuple]:
    """Path -> (mode, owner, size, mtime, sha256) of ``root``, everything under it, and ``files``."""
    out = {}
    for p in [root, *sorted(root.rglob("*")), *files]:
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
    return out


def test_tampered_wheel_fails_with_a_hash_error_naming_the_file(archive, tmp_path):
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy, symlinks=True)
    wheel = min((copy / "wheels").glob("*.whl"), key=lambda p: p.stat().st_size)
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    prefix = tmp_path / "root"
    proc = run([copy / "install.sh", "--prefix", prefix])
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "DO NOT MATCH THE HASHES" in output and wheel.name in output
    assert not (prefix / "opt/ctedge/current").exists()
    assert list((prefix / "opt/ctedge/releases").iterdir()) == []


def test_changed_model_file_fails_at_sha256sums_naming_it(archive, tmp_path):
    copy = tmp_path / "archive"
    shutil.copytree(archive, copy, symlinks=True)
    with (copy / "models/demo/model.json").open("a") as f:
        f.write(" ")
    proc = run([copy / "install.sh", "--prefix", tmp_path / "root"])
    assert proc.returncode != 0
    assert "models/demo/model.json: FAILED" in proc.stdout + proc.stderr and "SHA256SUMS" in proc.stderr
    assert not (tmp_path / "root").exists()


def test_uninstall_keeps_patient_data_unless_purged(archive, tmp_path):
    prefix = tmp_path / "root"
    assert run([archive / "install.sh", "--prefix", prefix]).returncode == 0
    (prefix / "srv/ctedge/results/keep.json").write_text("{}")
    removed = run([prefix / "opt/ctedge/current/install.sh", "--prefix", prefix, "--uninstall"])
    assert removed.returncode == 0, removed.stderr
    assert not (prefix / "opt/ctedge").exists()
    assert (prefix / "srv/ctedge/results/keep.json").is_file() and (prefix / "etc/ctedge/ctedge.yaml").is_file()
    purged = run([archive / "install.sh", "--prefix", prefix, "--uninstall", "--purge"])
    assert purged.returncode == 0 and not (prefix / "srv/ctedge").exists() and not (prefix / "etc/ctedge").exists()


def test_wrong_python_and_unknown_profile_are_refused_naming_the_problem(archive, tmp_path):
    proc = run([archive / "install.sh", "--prefix", tmp_path, "--profile", "no-such-box"])
    assert proc.returncode != 0 and "no device profile 'no-such-box'" in proc.stderr and "cpu-minipc" in proc.stderr
    proc = run([archive / "install.sh", "--prefix", tmp_path, "--python", "/no/such/python"])
    assert proc.returncode != 0 and "/no/such/python" in proc.stderr


@pytest.mark.parametrize("unit", SERVE_UNITS)
def test_units_run_unprivileged_and_hardened(unit):
    text = (INSTALLER / unit).read_text()
    for line in ("User=@USER@", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                 "EnvironmentFile=@ETC@/ctedge.env"):
        assert line in text
    [rw] = [line for line in text.splitlines() if line.startswith("ReadWritePaths=")]
    # serve writes its results; watch its outbox, the inbox (the DICOM receiver inside it, retention) and
    # the install's tune record in results/
    assert rw in ("ReadWritePaths=@DATA@/results", "ReadWritePaths=@DATA@/inbox @DATA@/outbox @DATA@/results")


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_install_sh_is_shellcheck_clean():
    proc = subprocess.run(["shellcheck", INSTALLER / "install.sh"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


SYSTEMD_MODE = r"""
set -euo pipefail
for d in etc opt srv usr/local; do
    n=${d//\//_}; mkdir -p "$OV/$n/u" "$OV/$n/w"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$OV/$n/u,workdir=$OV/$n/w" "/$d"
done
"$ARCHIVE/install.sh" --python "$PY" > /dev/null
as_ctedge() { setpriv --reuid=ctedge --regid=ctedge --init-groups "$@"; }
sed -i 's/^CTEDGE_API_TOKEN=$/CTEDGE_API_TOKEN=0123456789abcdef0123456789abcdef/' /etc/ctedge/ctedge.env
echo "correct horse battery" | as_ctedge ctedge serve --config /etc/ctedge/ctedge.yaml --add-user radiologist > /dev/null
sed -i "s/port: 8080/port: $PORT/" /etc/ctedge/ctedge.yaml
echo "stat $(stat -c '%a:%U' /srv/ctedge/inbox /srv/ctedge/outbox /srv/ctedge/results /etc/ctedge/ctedge.yaml | tr '\n' ' ')"
echo "units $(ls /etc/systemd/system/ctedge-*.service | tr '\n' ' ')"
if command -v systemd-analyze > /dev/null; then
    systemd-analyze verify /etc/systemd/system/ctedge-serve.service /etc/systemd/system/ctedge-watch.service
    echo "verified"
fi
as_ctedge ctedge doctor --config /etc/ctedge/ctedge.yaml --folder /srv/ctedge/inbox --folder /srv/ctedge/outbox 2> /dev/null
before=$(find /srv/ctedge /etc/ctedge/ctedge.yaml /etc/ctedge/ctedge.env -printf '%p %m %u %s %T@\n')
"$ARCHIVE/install.sh" --python "$PY" > /dev/null
after=$(find /srv/ctedge /etc/ctedge/ctedge.yaml /etc/ctedge/ctedge.env -printf '%p %m %u %s %T@\n')
if [ "$before" = "$after" ]; then echo "upgrade kept data"; fi
/opt/ctedge/current/install.sh --uninstall > /dev/null
if [ ! -e /opt/ctedge ] && [ -d /srv/ctedge/results ] && id ctedge > /dev/null; then
    echo "uninstall kept data and user"
fi
"""


def test_systemd_mode_in_a_private_mount_namespace(archive, tmp_path):
    """The real (non --prefix) install, with /etc, /opt, /srv and /usr/local as throw-away overlays in a
    private mount and network namespace: ctedge user, ownerships, units, doctor as ctedge, upgrade, uninstall."""
    py = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv") or not py.exists():
        pytest.skip("needs root, unshare, setpriv and /usr/bin/python3")
    native = "{}.{}".format(*sys.version_info[:2])
    version = subprocess.run([py, "-c", "import sys; print('{}.{}'.format(*sys.version_info[:2]))"],
                             capture_output=True, text=True).stdout.strip()
    if version != native:
        pytest.skip(f"the native archive is for Python {native}, /usr/bin/python3 is {version}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = offline_env() | {"OV": str(tmp_path), "ARCHIVE": str(archive), "PY": str(py), "PORT": str(port),
                           "PATH": f"/usr/local/bin:{os.environ['PATH']}"}
    proc = subprocess.run(["unshare", "-m", "-n", "--fork", "bash", "-c", SYSTEMD_MODE], capture_output=True,
                          text=True, env=env, timeout=300)
    if proc.returncode != 0 and "mount:" in proc.stderr and "overlay" in proc.stderr:
        pytest.skip(f"overlay mounts are not possible here: {proc.stderr.strip()}")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "stat 700:ctedge 700:ctedge 700:ctedge 640:root " in out
    assert "ctedge-serve.service" in out and "ctedge-watch.service" in out
    assert out.count("[  ok]") >= 10 and "\nREADY\n" in out
    assert "upgrade kept data" in out and "uninstall kept data and user" in out


def test_long_steps_say_what_they_do():
    """make and install.sh name each long phase and let pip show its progress (issue 26: 105 s and 42 s of silence)."""
    makefile = (REPO / "Makefile").read_text()
    pip_lines = [line for line in makefile.splitlines() if "pip install" in line]
    assert pip_lines and not any("--quiet" in line or " -q " in line for line in pip_lines)
    assert [line.split("]")[0] for line in makefile.splitlines() if line.lstrip().startswith('@echo "make: [')] == \
        ['\t@echo "make: [1/3', '\t@echo "make: [2/3', '\t@echo "make: [3/3']
    install = (INSTALLER / "install.sh").read_text()
    assert "install --isolated --quiet" not in install and all(f'echo "[{n}/3] ' in install for n in (1, 2, 3))

"""``ctedge doctor``: is this box ready to run the services of a profile?

Checks Python and the installed packages, the profile, each model bundle of the profile (CT, X-ray:
it loads and classifies a synthetic input of its own kind; the variant it runs and its tune record),
the CPU, the Coral delegate (edgetpu profiles), the data folders (owner-only, usable by the service
user), the config files, the server port, the API token and the permissions of the file holding it,
the login users, the DICOM section (AE titles, the receiver's port, a C-ECHO to each destination)
and the retention. Prints one line per check; exit 0 only when nothing failed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import pwd
import re
import socket
import stat
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from edge.card import MODALITY_TERMS, ModelCard, load_card
from edge.engine import Engine
from edge.errors import UserError
from edge.profile import Profile, load_profile
from edge.runtime import EDGETPU_LIBRARY
from edge.server import users_file
from edge.server.auth import read_users
from edge.runtime_openvino import unavailable
from edge.tune import AUTO, cache_path, cpu_identity, fallback_variant, is_busy, phantom_group, tuned_choice

FAST_INT8 = {"avx512_vnni", "avx_vnni", "asimddp"}
ECHO_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False           # shown, but does not make the box "not ready"


def run_checks(config: Path, folders: list[Path], user: pwd.struct_passwd, env_file: Path | None) -> list[Check]:
    """Every check for ``config``; checks that need the profile are skipped when it does not load."""
    checks = [check_python(), check_packages(), check_cpu()]
    try:
        profile = load_profile(config)
    except UserError as exc:
        return checks + [Check("profile", False, str(exc))]
    checks.append(Check("profile", True, f"{config} ({profile.name}: {profile.description})"))
    if profile.model.delegate == "edgetpu":
        checks.append(check_delegate(profile))
    readable = [(Path(sys.executable).resolve(), "rx"), (config, "r"), *([(env_file, "r")] if env_file else []),
                *[(bundle, "rx") for bundle in profile.model.bundles]]
    models = [check for bundle in profile.model.bundles for check in check_bundle(profile, bundle)]
    secrets = [check_secret_file(user, env_file)] if env_file else []
    dicom = check_dicom(profile) if profile.dicom else []
    return checks + [*models, check_access(user, readable),
                     *[check_folder(user, d) for d in [profile.server.results_dir, *folders]],
                     check_port(profile), check_token(profile, read_env(env_file) if env_file else {}, env_file),
                     *secrets, check_users(profile), *dicom, check_retention(profile)]


def check_python() -> Check:
    v = sys.version_info
    return Check("python", v >= (3, 10), f"{platform.python_implementation()} {v[0]}.{v[1]}.{v[2]} ({sys.executable})")


def check_packages() -> Check:
    """The ctedge distribution and each of its (non-extra) requirements, with installed versions."""
    try:
        requires = metadata.requires("ctedge") or []
        own = metadata.version("ctedge")
    except metadata.PackageNotFoundError:
        return Check("packages", False, "the ctedge distribution is not installed (pip install ctedge)")
    names = [re.match(r"[A-Za-z0-9._-]+", r)[0] for r in requires if "extra ==" not in r]  # type: ignore[index]
    found, missing = [], []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check("packages", False, f"missing: {', '.join(missing)} (reinstall from the archive)")
    return Check("packages", True, f"ctedge {own}; " + ", ".join(found))


def check_cpu() -> Check:
    machine, cpu = platform.machine(), cpu_identity()
    flags = set(cpu["flags"])
    fast = sorted(FAST_INT8 & flags)
    dot = f"int8 dot-product instructions ({', '.join(fast)})" if fast else "no int8 dot-product instructions"
    detail = f"{cpu['model']} ({machine}), {cpu['cpus']} cores, flags: {' '.join(cpu['flags']) or 'none listed'}; {dot}"
    if machine == "x86_64" and "avx2" not in flags:
        return Check("cpu", False, detail + "; no AVX2: the TFLite int8 kernels will be slow", warning=True)
    return Check("cpu", True, detail)


def check_delegate(profile: Profile) -> Check:
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError:
        return Check("coral delegate", False, f"{EDGETPU_LIBRARY} not found: install libedgetpu1-std from Coral's "
                                              "package repository (profile delegate: edgetpu)")
    return Check("coral delegate", True, f"{EDGETPU_LIBRARY} loads")


def check_bundle(profile: Profile, bundle: Path) -> list[Check]:
    """The ``model`` and ``variant`` checks of one bundle of ``profile``, each naming the bundle and
    its modality (a card that cannot be read is one failed ``model`` check)."""
    try:
        card = load_card(bundle)
    except UserError as exc:
        return [Check("model", False, str(exc))]
    return [check_model(profile, card), check_tuned(profile, card)]


def _named(card: ModelCard) -> str:
    return f"{MODALITY_TERMS[card.modality].name} bundle {card.bundle}"


def check_model(profile: Profile, card: ModelCard) -> Check:
    """Load the engine of ``card``'s bundle as the profile runs it (the model card checked against the
    model files and the profile) and classify one input of the card's kind made from a synthetic
    phantom (a group, a slice or an image)."""
    try:
        engine = Engine.from_profile_bundle(profile, card.bundle)
        probs = np.asarray(engine.classifier.predict(phantom_group(card)))
    except UserError as exc:
        return Check("model", False, f"{_named(card)}: {exc}")
    classes = engine.classifier.classes
    if probs.shape != (len(classes),) or not np.all(np.isfinite(probs)) or abs(float(probs.sum()) - 1) > 1e-3:
        return Check("model", False, f"{_named(card)}: output {probs.tolist()} is not "
                                     f"{len(classes)} probabilities ({', '.join(classes)})")
    info = engine.info
    return Check("model", True, f"{info.name} {info.version}, {_named(card)}: matches its card, classifies "
                                "a synthetic input" + (f" ({info.banner})" if info.banner else ""))


def check_tuned(profile: Profile, card: ModelCard) -> Check:
    """The variant ``ctedge tune`` recorded for this CPU and ``card``'s bundle (informational: serve
    and watch tune on their first start when none is recorded)."""
    variant, why = profile.model.variant_of(card)
    if variant != AUTO:
        return Check("variant", True, f"{_named(card)}: {variant} (set by the profile)")
    named = f"{_named(card)}: {why}:" if why else f"{_named(card)}:"
    cache = cache_path(profile)
    choice = tuned_choice(card, cache)
    if choice is None:
        return Check("variant", True, f"{named} not tuned on this CPU yet: serve and watch tune on first "
                                      f"start (or run ctedge tune --config ...); until then {fallback_variant(card)}")
    runtime = "" if choice.runtime == "litert" else f" on {choice.runtime}"
    if runtime and unavailable():
        return Check("variant", True, f"{named} tuned to run{runtime}, which cannot be used now ({unavailable()}): "
                                      f"{fallback_variant(card)} on LiteRT until ctedge tune runs again")
    age = choice.age_days()
    when = f"{choice.tuned_at}, {age:.0f} day(s) ago" if age is not None else choice.tuned_at
    load = f"load {choice.load:.2f}" if choice.load >= 0 else "load not recorded"
    busy = is_busy(choice.load)
    return Check("variant", not busy, f"{named} {choice.variant}{runtime}, {choice.threads} thread(s), {choice.ms_per_group} ms "
                                      f"per group (tuned on this CPU {when}, {load}; in {cache})"
                                      + ("; timed on a busy CPU: timed again at the next start of serve or watch on an idle CPU, "
                                         "or run ctedge tune --config ... when idle" if busy else ""),
                 warning=busy)


def can(user: pwd.struct_passwd, path: Path, want: str) -> bool:
    """Whether ``user`` may access ``path`` with ``want`` (letters of 'rwx'), folders above included."""
    if user.pw_uid == 0:
        return True
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))

    def allowed(p: Path, letters: str) -> bool:
        st = p.stat()
        shift = 6 if st.st_uid == user.pw_uid else 3 if st.st_gid in groups else 0
        bits = {"r": 4, "w": 2, "x": 1}
        return all(st.st_mode >> shift & bits[c] for c in letters)

    path = path.absolute()
    return all(allowed(p, "x") for p in reversed(path.parents)) and allowed(path, want)


def check_access(user: pwd.struct_passwd, wanted: list[tuple[Path, str]]) -> Check:
    """The service user can run the interpreter and read the profile, environment file and model."""
    bad = [f"{p} ({want})" for p, want in wanted if not p.exists() or not can(user, p, want)]
    if bad:
        return Check("access", False, f"{user.pw_name} cannot use {', '.join(bad)}")
    return Check("access", True, f"{user.pw_name} can use {', '.join(str(p) for p, _ in wanted)}")


def check_folder(user: pwd.struct_passwd, folder: Path) -> Check:
    if not folder.is_dir():
        return Check(f"folder {folder}", False, "does not exist (re-run install.sh, or create it with mode 0700)")
    st = folder.stat()
    mode = stat.S_IMODE(st.st_mode)
    owner = _user_name(st.st_uid)
    problems = []
    if mode & 0o077:
        problems.append(f"mode {mode:04o} lets other accounts in (chmod 700 {folder})")
    if st.st_uid != user.pw_uid:
        problems.append(f"owned by {owner}, not {user.pw_name} (chown {user.pw_name}: {folder})")
    if not can(user, folder, "rwx"):
        problems.append(f"{user.pw_name} cannot read and write it")
    return Check(f"folder {folder}", not problems, "; ".join(problems) or f"owner {owner}, mode {mode:04o}")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_port(profile: Profile) -> Check:
    """The server's address is free, or a ctedge server already answers /health on it."""
    host, port = profile.server.host, profile.server.port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    except OSError as exc:
        if running_ctedge(host, port):
            return Check("port", True, f"{host}:{port} is served by a running ctedge server")
        return Check("port", False, f"{host}:{port} cannot be used ({exc.strerror or exc}); free it or change server.port")
    return Check("port", True, f"{host}:{port} is free")


def running_ctedge(host: str, port: int) -> bool:
    """Whether the server on ``host:port`` is ctedge's (waitress identifies itself as 'ctedge')."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            server = response.headers.get("Server", "")
    except urllib.error.HTTPError as exc:          # e.g. 503 "no worker running": still a ctedge server
        server = exc.headers.get("Server", "")
    except (OSError, ValueError):
        return False
    return server.startswith("ctedge")


def read_env(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a systemd environment file (comments and blanks skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip().strip('"\'') for k, v in pairs}


def check_token(profile: Profile, env: dict[str, str], env_file: Path | None) -> Check:
    name = profile.server.api_token_env
    token = os.environ.get(name) or env.get(name, "")
    where = f"{name} in {env_file}" if env_file else f"the environment variable {name}"
    if not token:
        return Check("api token", False, f"{where} is not set: the API answers 503 until it is")
    if len(token) < 16:
        return Check("api token", False, f"{where} has only {len(token)} characters; use at least 16 (openssl rand -hex 32)")
    return Check("api token", True, f"{where} is set ({len(token)} characters)")


def check_secret_file(user: pwd.struct_passwd, path: Path) -> Check:
    """The environment file holds the API token: no other account may read or change it (group access
    only for the service user's own group, as install.sh sets it: root:ctedge 0640)."""
    try:
        st = path.stat()
    except OSError as exc:
        return Check("secret file", False, f"{path}: cannot be read ({exc.strerror})")
    mode = stat.S_IMODE(st.st_mode)
    own_group = st.st_gid == user.pw_gid
    if mode & 0o007 or mode & 0o020 or (mode & 0o040 and not own_group):
        return Check("secret file", False, f"{path}: mode {mode:04o} lets other accounts read or change the token "
                                           f"(chmod 600 {path}, or 640 with group {user.pw_name})")
    return Check("secret file", True, f"{path}: mode {mode:04o}, readable by no other account")


def check_dicom(profile: Profile) -> list[Check]:
    """The DICOM section: its AE titles, the receiver's port free to bind (or a ctedge receiver answering
    C-ECHO on it), and a C-ECHO to each destination."""
    from pynetdicom import AE  # pynetdicom: only for a profile with a dicom: section
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    d = profile.dicom
    assert d is not None
    if logging.getLogger("pynetdicom").level == logging.NOTSET:  # the check's line says what failed
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    titles = [d.ae_title, *(c.ae_title for c in d.allowed_callers), *(c.ae_title for c in d.destinations)]
    checks = [Check("dicom ae titles", True, f"{len(titles)} valid (1-16 ASCII characters): {', '.join(titles)}")]

    def echo(ae_title: str, host: str, port: int) -> str:
        """'' when the peer answers C-ECHO with success, else what went wrong."""
        ae = AE(d.ae_title)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ECHO_TIMEOUT_S
        assoc = ae.associate(host, port, ae_title=ae_title)
        if not assoc.is_established:
            return f"no association (peer down, wrong address, or it refuses our AE title {d.ae_title})"
        try:
            status = assoc.send_c_echo()
            return "" if status and status.Status == 0 else f"C-ECHO status {getattr(status, 'Status', 'none')}"
        finally:
            assoc.release()

    try:
        family = socket.getaddrinfo(d.host, d.port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((d.host, d.port))
        checks.append(Check("dicom port", True, f"{d.host}:{d.port} is free for the receiver ({d.ae_title})"))
    except OSError as exc:
        host = "127.0.0.1" if d.host in ("0.0.0.0", "::", "") else d.host
        if not echo(d.ae_title, host, d.port):
            checks.append(Check("dicom port", True, f"{d.host}:{d.port} is served by a running receiver ({d.ae_title})"))
        else:
            checks.append(Check("dicom port", False, f"{d.host}:{d.port} cannot be used ({exc.strerror or exc}); "
                                                     "free it or change dicom.port"))
    for i, dest in enumerate(d.destinations):
        problem = echo(dest.ae_title, dest.host, dest.port)
        where = f"{dest.ae_title}@{dest.host}:{dest.port}"
        checks.append(Check(f"dicom destination {i}", not problem,
                            f"{where} answers C-ECHO" if not problem else
                            f"{where}: {problem}; results wait in the outbox until it answers "
                            f"(check dicom.destinations[{i}] and the PACS's list of known nodes)"))
    return checks


def check_retention(profile: Profile) -> Check:
    r = profile.retention
    return Check("retention", True, f"inbox entries {r.inbox_days:g} d after their result is recorded and sent, "
                                    f"records {r.outbox_days:g} d, server studies {r.results_days:g} d "
                                    "(retention: in the profile; `ctedge retention` applies it now)")


def check_users(profile: Profile) -> Check:
    path = users_file(profile)
    if not profile.server.login_required:
        return Check("login users", True, "login disabled (server.login_required: false, loopback only)")
    try:
        users = read_users(path)
    except (UserError, OSError) as exc:
        return Check("login users", False, f"{path}: cannot be read ({exc})")
    if not users:
        return Check("login users", False, f"no users in {path}: add one with "
                                           f"`ctedge serve --config {profile.source} --add-user NAME`")
    return Check("login users", True, f"{len(users)} user(s) in {path}")

"""Device profiles: YAML files in ``firmware_config/`` parsed once into typed, validated objects.

An unknown key, a value of the wrong type or a missing model file is a ProfileError naming the
file and the key. Relative paths in a profile are relative to the profile's own folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edge.errors import UserError
from edge.preprocess.select import METHODS


class ProfileError(UserError):
    """A device profile that cannot be used."""


@dataclass(frozen=True)
class ModelSettings:
    bundle: Path                                   # folder with model.json and the .tflite files
    variant: str = "int8"                          # a variant listed in model.json
    delegate: Literal["none", "edgetpu"] = "none"  # edgetpu: the encoder runs on a Coral via libedgetpu
    threads: int = 0                               # 0 = all cores


@dataclass(frozen=True)
class PipelineSettings:
    selection: str = "lung-extent"
    mask_lungs: bool = True
    group_size: int = 50
    override: float = 0.9
    clahe_clip: float = 2.0


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_upload_mb: int = 1024
    workers: int = 1
    queue_size: int = 4
    results_dir: Path = Path("ctedge-results")
    api_token_env: str = "CTEDGE_API_TOKEN"
    login_required: bool = True
    users_file: Path | None = None                 # "user:hash" lines (ctedge serve --add-user NAME); None: results_dir/users.txt
    secret_key_env: str = "CTEDGE_SECRET_KEY"      # session signing key; unset: generated once into results_dir
    cookie_secure: bool = False                    # true when clients reach the server over HTTPS (TLS proxy in front)
    max_unpacked_mb: int = 4096                    # one upload's files after unpacking its zips, all together
    min_free_mb: int = 512                         # uploads get 507 while results_dir has less free space
    keep_uploads_days: int = 0                     # raw uploads (full DICOM) kept after analysis; 0: deleted at once
    allowed_hosts: str = ""                        # comma-separated Host names clients use besides loopback and host


@dataclass(frozen=True)
class WatcherSettings:
    poll_seconds: float = 5.0
    stable_seconds: float = 10.0
    marker_file: str = ""                          # e.g. "READY": process a study folder only once it exists


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    model: ModelSettings
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    watcher: WatcherSettings = field(default_factory=WatcherSettings)
    source: Path = Path()

    @property
    def threads(self) -> int:
        return self.model.threads or os.cpu_count() or 1


def load_profile(path: str | Path) -> Profile:
    """Read and validate a device profile; raise ProfileError naming the file and the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(path, f"cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(path, f"is not valid YAML ({exc})") from exc
    profile = _build(Profile, raw, path, "", path.parent)
    profile = dataclasses.replace(profile, source=path)
    _check(profile, path)
    return profile


def _build(cls: type, raw: Any, path: Path, prefix: str, base: Path) -> Any:
    if not isinstance(raw, dict):
        raise ProfileError(path, f"{prefix or 'the profile'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ProfileError(path, f"unknown key {prefix + unknown[0]!r}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, path, f"{prefix}{name}", base)
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ProfileError(path, f"missing key {prefix + missing[0]!r}")
    return cls(**values)


def _convert(hint: Any, value: Any, path: Path, key: str, base: Path) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, key + ".", base)
    if type(None) in typing.get_args(hint):        # Optional: null allowed, otherwise the other type
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ProfileError(path, f"{key} must be one of {', '.join(map(str, typing.get_args(hint)))}, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ProfileError(path, f"{key} must be a path string, got {type(value).__name__}")
        return (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    expected = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[hint]
    if not isinstance(value, expected) or (hint is not bool and isinstance(value, bool)):
        raise ProfileError(path, f"{key} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return hint(value)


def _check(profile: Profile, path: Path) -> None:
    card = profile.model.bundle / "model.json"
    if not card.is_file():
        raise ProfileError(path, f"model.bundle: no model card at {card}")
    variants = json.loads(card.read_text()).get("variants", {})
    if profile.model.variant not in variants:
        hint = " (compile the int8 encoder with edgetpu_compiler, see README)" if profile.model.variant == "edgetpu" else ""
        raise ProfileError(path, f"model.variant: {card} has no {profile.model.variant!r} variant{hint}; "
                                 f"available: {', '.join(variants)}")
    for part, name in variants[profile.model.variant].items():
        if not (profile.model.bundle / name).is_file():
            raise ProfileError(path, f"model.bundle: {part} model file {profile.model.bundle / name} is missing")
    if profile.pipeline.selection not in METHODS:
        raise ProfileError(path, f"pipeline.selection must be one of {', '.join(METHODS)}")
    if not 0.5 <= profile.pipeline.override <= 1.0:
        raise ProfileError(path, "pipeline.override must be between 0.5 and 1.0")
    for key, value in (("model.threads", profile.model.threads), ("pipeline.group_size", profile.pipeline.group_size),
                       ("server.workers", profile.server.workers), ("server.queue_size", profile.server.queue_size),
                       ("server.max_upload_mb", profile.server.max_upload_mb),
                       ("server.max_unpacked_mb", profile.server.max_unpacked_mb),
                       ("server.min_free_mb", profile.server.min_free_mb),
                       ("server.keep_uploads_days", profile.server.keep_uploads_days)):
        if value < (0 if key in ("model.threads", "server.min_free_mb", "server.keep_uploads_days") else 1):
            raise ProfileError(path, f"{key} must be positive, got {value}")

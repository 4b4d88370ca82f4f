"""Device profiles: YAML files in ``firmware_config/`` parsed once into typed, validated objects.

An unknown key, a value of the wrong type or a missing model file is a ProfileError naming the
file and the key. Relative paths in a profile are relative to the profile's own folder.
"""

from __future__ import annotations

import dataclasses
import os
import string
import typing
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml

from edge.card import CARD_FILE, ModelCard, load_card
from edge.errors import ModelLoadError, UserError
from edge.options import PipelineOptions


class ProfileError(UserError):
    """A device profile that cannot be used."""


@dataclass(frozen=True)
class ModelSettings:
    bundle: Path                                   # folder with model.json and the .tflite files
    variant: str = "auto"                          # a variant listed in model.json, or auto: the one `ctedge tune` chose for this CPU
    delegate: Literal["none", "edgetpu"] = "none"  # edgetpu: the encoder runs on a Coral via libedgetpu
    threads: int = 0                               # 0 = the tuned count (variant auto), else all cores
    more_bundles: tuple[Path, ...] = ()            # bundles for other modalities (e.g. an X-ray bundle beside a CT one)

    @property
    def bundles(self) -> tuple[Path, ...]:
        """Every model bundle of the device; a study goes to the one of its modality."""
        return (self.bundle, *self.more_bundles)

    def variant_of(self, card: ModelCard) -> tuple[str, str]:
        """The variant asked of ``card``'s bundle, and why it is not ``variant`` ('' when it is). An
        explicit variant binds the main bundle (loading it fails when it lacks it); an extra bundle
        that lacks it makes its own automatic choice (``auto``)."""
        main = load_card(self.bundle).path.resolve() == card.path.resolve()
        if self.variant == "auto" or self.variant in card.variants or main:
            return self.variant, ""
        return "auto", f"{self.variant} requested; this bundle has only {', '.join(card.variants)}"

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality each bundle reads (``edge.card.MODALITIES``): what the DICOM receiver accepts."""
        return tuple(load_card(bundle).modality for bundle in self.bundles)


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
    viewer_url: str = ""                           # PACS viewer link of a study, e.g. http://pacs/ohif/viewer?StudyInstanceUIDs={study_uid}
    timezone: str = ""                             # IANA zone the pages show times in; "": the device's local zone


@dataclass(frozen=True)
class WatcherSettings:
    poll_seconds: float = 5.0
    stable_seconds: float = 10.0
    marker_file: str = ""                          # e.g. "READY": process a study folder only once it exists


@dataclass(frozen=True)
class RetentionSettings:
    """How long patient data stays on the box, in days (0: removed at the next retention run; see
    ``edge.retention``): inbox entries once their result is recorded (and sent to every DICOM
    destination), result records and server studies once finished. Failed studies stay in the inbox
    ``outbox_days``, for the operator to look at."""
    inbox_days: float = 1.0
    outbox_days: float = 14.0
    results_days: float = 14.0


@dataclass(frozen=True)
class DicomPeer:
    """A DICOM node: an allowed caller (``host`` empty: any address) or a destination for results."""
    ae_title: str
    host: str = ""
    port: int = 104


@dataclass(frozen=True)
class DicomSettings:
    ae_title: str = "CTEDGE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_callers: tuple[DicomPeer, ...] = ()    # AE titles, or {ae_title, host}; empty: any caller
    inbox: Path | None = None                      # received studies; ctedge watch uses its INBOX
    destinations: tuple[DicomPeer, ...] = ()       # {ae_title, host, port} that results are sent to


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    model: ModelSettings
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)
    server: ServerSettings = field(default_factory=ServerSettings)
    watcher: WatcherSettings = field(default_factory=WatcherSettings)
    dicom: DicomSettings | None = None             # DICOM receiver and result destinations (edge.dicomnet)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    source: Path = Path()
    pipeline_keys: frozenset[str] = frozenset()    # the pipeline keys the file sets (checked against the card)

    @property
    def threads(self) -> int:
        return self.model.threads or os.cpu_count() or 1

    def pipeline_settings(self) -> dict[str, tuple[object, str]]:
        """The pipeline keys this profile sets, as ``{key: (value, "FILE: pipeline.KEY")}`` for
        ``edge.options.apply_settings``."""
        return {k: (getattr(self.pipeline, k), f"{self.source}: pipeline.{k}") for k in sorted(self.pipeline_keys)}


INTERNAL_FIELDS = ("source", "pipeline_keys")


DEFAULT_XRAY_BUNDLE = Path(__file__).resolve().parent / "models" / "xray-research"
"""The bundled X-ray research model: what a device without a profile reads X-ray studies with."""


def default_profile(bundle: Path, more_bundles: tuple[Path, ...] = ()) -> Profile:
    """A profile with every default and the given model bundles (what ``ctedge predict`` uses without --config)."""
    return Profile(name="default", description="defaults", model=ModelSettings(bundle=bundle, more_bundles=more_bundles))


def bundled_defaults(default_bundle: Path) -> Profile:
    """The defaults without a profile or ``--model``: ``default_bundle``, and for X-ray studies the bundled
    X-ray research model (:data:`DEFAULT_XRAY_BUNDLE`) when it is installed and ``default_bundle`` reads CT."""
    xray = DEFAULT_XRAY_BUNDLE
    more = (xray,) if (xray / CARD_FILE).is_file() and load_card(default_bundle).modality != "xray" else ()
    return default_profile(default_bundle, more)


def with_model(profile: Profile, bundle: Path | None = None, variant: str | None = None,
               threads: int | None = None) -> Profile:
    """``profile`` with the model settings that command-line flags give (None keeps the profile's).
    A ``bundle`` replaces the profile's bundle of the same modality and keeps the others (it is
    added when the profile has no bundle of its modality)."""
    model = profile.model
    if bundle is not None:
        modality = load_card(bundle).modality
        modalities = [load_card(b).modality for b in model.bundles]
        bundles = [bundle if m == modality else b for b, m in zip(model.bundles, modalities)]
        bundles += [] if modality in modalities else [bundle]
        model = dataclasses.replace(model, bundle=bundles[0], more_bundles=tuple(bundles[1:]))
    given = {"variant": variant, "threads": threads}
    return dataclasses.replace(profile, model=dataclasses.replace(
        model, **{k: v for k, v in given.items() if v is not None}))  # type: ignore[arg-type]


def command_profile(config: Path | None, bundle: Path | None, default_bundle: Path, variant: str | None = None,
                    threads: int | None = None) -> Profile:
    """The profile that a command's ``--config``, ``--model``, ``--variant`` and ``--threads`` describe:
    the device profile with ``bundle`` in place of its bundle of the same modality (see
    :func:`with_model`), or without a profile the defaults with ``bundle`` alone (else :func:`bundled_defaults`)."""
    if config is None:
        base = default_profile(bundle) if bundle else bundled_defaults(default_bundle)
        return with_model(base, variant=variant, threads=threads)
    return with_model(load_profile(config), bundle, variant, threads)


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
    profile = dataclasses.replace(profile, source=path, pipeline_keys=frozenset(raw.get("pipeline") or {}))
    _check(profile, path)
    return profile


def _build(cls: type, raw: Any, path: Path, prefix: str, base: Path) -> Any:
    if not isinstance(raw, dict):
        raise ProfileError(path, f"{prefix or 'the profile'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in INTERNAL_FIELDS}
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
    try:
        return cls(**values)
    except ValueError as exc:
        raise ProfileError(path, f"{prefix.rstrip('.') or 'the profile'}: {exc}") from exc


def _convert(hint: Any, value: Any, path: Path, key: str, base: Path) -> Any:
    if typing.get_origin(hint) is tuple:           # tuple[X, ...]: a YAML list
        if not isinstance(value, list):
            raise ProfileError(path, f"{key} must be a list, got {type(value).__name__}")
        return tuple(_convert(typing.get_args(hint)[0], v, path, f"{key}[{i}]", base) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint) and isinstance(value, str):  # a peer written as its AE title alone
        value = {dataclasses.fields(hint)[0].name: value}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, key + ".", base)  # type: ignore[arg-type]
    if type(None) in typing.get_args(hint):        # Optional: null allowed, otherwise the other type
        if value is None:
            return None
        return _convert(next(a for a in typing.get_args(hint) if a is not type(None)), value, path, key, base)
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
    modalities: dict[str, str] = {}
    for i, bundle in enumerate(profile.model.bundles):
        key = "model.bundle" if i == 0 else f"model.more_bundles[{i - 1}]"
        try:
            card = load_card(bundle)
        except ModelLoadError as exc:
            raise ProfileError(path, f"{key}: {exc}") from exc
        variant, _ = profile.model.variant_of(card)
        try:
            for name in (card.variants if variant == "auto" else [variant]):
                card.files(name)
        except ModelLoadError as exc:
            raise ProfileError(path, f"model.variant: {exc}") from exc
        if card.modality in modalities:
            raise ProfileError(path, f"{key} reads {card.modality} studies, as {modalities[card.modality]} does: "
                                     "one bundle per modality")
        modalities[card.modality] = key
    for key, value in (("model.threads", profile.model.threads),
                       ("server.workers", profile.server.workers), ("server.queue_size", profile.server.queue_size),
                       ("server.max_upload_mb", profile.server.max_upload_mb),
                       ("server.max_unpacked_mb", profile.server.max_unpacked_mb),
                       ("server.min_free_mb", profile.server.min_free_mb),
                       ("server.keep_uploads_days", profile.server.keep_uploads_days),
                       *((f"retention.{k}", getattr(profile.retention, k)) for k in ("inbox_days", "outbox_days",
                                                                                      "results_days"))):
        if value < (0 if key in ("model.threads", "server.min_free_mb", "server.keep_uploads_days")
                    or key.startswith("retention.") else 1):
            raise ProfileError(path, f"{key} must be positive, got {value}")
    if profile.dicom is not None:
        _check_dicom(profile.dicom, path)
    _check_viewer_url(profile.server.viewer_url, path)
    _check_timezone(profile.server.timezone, path)


VIEWER_URL_FIELDS = ("study_uid", "accession", "patient_id")
"""What ``server.viewer_url`` may name in braces (each filled in URL-encoded)."""


def _check_viewer_url(template: str, path: Path) -> None:
    if not template:
        return
    allowed = ", ".join("{" + f + "}" for f in VIEWER_URL_FIELDS)
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ProfileError(path, f"server.viewer_url is not a valid template ({exc}); fields in braces: {allowed}") from None
    odd = [name for name, spec, conv in fields if name not in VIEWER_URL_FIELDS or spec or conv]
    if odd:
        raise ProfileError(path, f"server.viewer_url: unsupported field {{{odd[0]}}} (no conversions or formats); fields in braces: {allowed}")
    if not {name for name, _, _ in fields} & {"study_uid", "accession"}:
        raise ProfileError(path, "server.viewer_url must name the study: put {study_uid} (or {accession}) in it")
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProfileError(path, f"server.viewer_url must be an http:// or https:// address, got {template!r}")


def viewer_link(template: str, study: dict[str, str]) -> str | None:
    """The PACS viewer address of a study (``server.viewer_url`` filled in, URL-encoded); None when no
    template is set or the study lacks a field the template names."""
    if not template:
        return None
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    if not all(study.get(n) for n in names):
        return None
    return template.format(**{n: quote(study[n], safe="") for n in names})


def _check_timezone(name: str, path: Path) -> None:
    if not name:
        return
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ProfileError(path, f"server.timezone: unknown time zone {name!r} (an IANA name such as "
                                 "Europe/Berlin or UTC)") from exc


def _check_dicom(d: DicomSettings, path: Path) -> None:
    titles = [("dicom.ae_title", d.ae_title)] + [(f"dicom.allowed_callers[{i}].ae_title", c.ae_title)
                                                 for i, c in enumerate(d.allowed_callers)]
    titles += [(f"dicom.destinations[{i}].ae_title", c.ae_title) for i, c in enumerate(d.destinations)]
    for key, title in titles:
        if not 1 <= len(title.strip()) <= 16 or "\\" in title or not title.isascii():
            raise ProfileError(path, f"{key} must be 1 to 16 ASCII characters without a backslash, got {title!r}")
    for key, port in [("dicom.port", d.port)] + [(f"dicom.destinations[{i}].port", c.port)
                                                 for i, c in enumerate(d.destinations)]:
        if not 0 <= port <= 65535:
            raise ProfileError(path, f"{key} must be a port number (0-65535), got {port}")
    for i, dest in enumerate(d.destinations):
        if not dest.host:
            raise ProfileError(path, f"dicom.destinations[{i}].host is missing")

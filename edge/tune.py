"""``ctedge tune``: pick the fastest model variant and thread count by measuring them on this CPU.

The same bundle is fastest as int8 on a CPU with AVX-512 VNNI but may be fastest as float32 on
one with AVX2 only, so the choice is measured, not assumed. Every variant that passes the
bundle's fidelity thresholds (``fidelity.json``: top-1 agreement >= 99 % and max probability
difference <= 0.05 against the Keras reference; a bundle of one variant needs no report: that
variant) runs on one group with 1..N threads; the fastest few are timed again in turn (a
run-off, so that a busy spell of a shared machine cannot pick the winner), and the fastest of those
(median ms) is recorded in the tune cache under a key made of the CPU model, its instruction-set
flags and core count, the TFLite runtime's version, and the bundle's content hash: a new bundle,
CPU or runtime is tuned again. Timings are taken on an idle CPU: while the load average is at
least half the core count, tuning waits (up to ``IDLE_WAIT_S``), then measures anyway with a
warning; the load is recorded with the choice (``ctedge doctor`` shows it and the choice's age). A choice
timed on a busy CPU is measured again when ``serve`` or ``watch`` starts on an idle one (else kept, with a
warning). A profile whose ``model.variant`` is
``auto`` (the default) uses that choice, as does an extra bundle (``model.more_bundles``) that lacks
the profile's explicit variant. ``ctedge tune`` does this for every bundle of a profile
(CT, X-ray: each has its own record); for a 2-D bundle the "group" is one slice or radiograph.

Every edge runtime is measured: LiteRT, and OpenVINO (``edge.runtime_openvino``, an extra) with
an explicit precision hint, f32, and bf16 where the CPU computes bf16 natively. Each (runtime,
variant, precision hint) is a candidate. A LiteRT variant is eligible when ``fidelity.json`` passes
it; an OpenVINO candidate must in addition agree with LiteRT float32 (the bundle's float32 variant,
else LiteRT of the same variant) on the tuned input and two phantom groups: same top-1 class, max
probability difference <= 0.05. OpenVINO missing or unable to read a file: its candidates are
skipped with the reason, never an error.

The cache is one JSON file per install, owner-only (0600 in a 0700 folder): ``$CTEDGE_TUNE_CACHE``
if set, else ``tuned.json`` in the profile's ``server.results_dir`` (the install's data folder), and
only for commands run without a profile ``$XDG_CACHE_HOME/ctedge/tuned.json`` (``~/.cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from edge.card import ModelCard, load_card
from edge.errors import ModelLoadError
from edge.kinds import KINDS
from edge.pipeline import PREPARE
from edge.preprocess.segment import ThresholdSegmenter
from edge.preprocess.window import clahe, lung_window, resize_slices
from edge.profile import ModelSettings, Profile
from edge.runtime import RUNTIMES
from edge.runtime_openvino import unavailable

log = logging.getLogger("ctedge.tune")

AUTO = "auto"
FALLBACK_VARIANT = "int8"
MIN_AGREEMENT = 0.99
MAX_PROB_DIFF = 0.05
BUSY_LOAD_PER_CPU = 0.5
"""A 1-minute load average of at least this many per core means the CPU is not idle enough to time on."""
IDLE_WAIT_S = 60.0
IDLE_POLL_S = 5.0
RUNTIME_PACKAGES = ("ai-edge-litert", "tflite-runtime", "tensorflow")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve")
"""The instruction-set flags that decide which TFLite/XNNPACK kernels run (x86 and Arm)."""
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""Flags of a CPU that computes bf16 natively: only there is OpenVINO's bf16 hint a candidate."""
RUNOFF = 3
"""How many of the sweep's fastest candidates are timed again in turn (:func:`runoff`)."""
FIDELITY_SEEDS = (1, 2)
"""Phantom groups (besides the tuned input) on which an OpenVINO candidate must agree with LiteRT."""


def cpu_identity() -> dict:
    """This CPU's model name, the ISA flags of :data:`ISA_FLAGS` it has, and its logical core count."""
    models, flags = [], set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model"):
                models.append(value.strip())
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:              # not Linux: the platform's name, no flags
        pass
    model = models[0] if models else platform.processor() or platform.machine()
    return {"model": model, "flags": [f for f in ISA_FLAGS if f in flags], "cpus": os.cpu_count() or 1}


def runtime_version() -> str:
    """The TFLite runtime that runs the models, with its version, and OpenVINO's when it is installed
    (their kernels decide the speed too)."""
    found = [f"{name} {_version(name)}" for name in RUNTIME_PACKAGES if _version(name)][:1] or ["no TFLite runtime"]
    return ", ".join(found + ([f"openvino {_version('openvino')}"] if _version("openvino") else []))


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def cpu_key(cpu: dict | None = None) -> str:
    """The machine part of a record's key: CPU model, ISA flags, cores and the TFLite runtime."""
    cpu = cpu or cpu_identity()
    return f"{cpu['model']} | {' '.join(cpu['flags']) or 'no listed flags'} | {cpu['cpus']} cpus | {runtime_version()}"


def is_busy(load: float) -> bool:
    """True when a 1-minute load average of ``load`` is too high to time on (:data:`BUSY_LOAD_PER_CPU`)."""
    return load >= BUSY_LOAD_PER_CPU * (os.cpu_count() or 1)


def wait_for_idle(max_wait_s: float = IDLE_WAIT_S, poll_s: float = IDLE_POLL_S) -> float:
    """Wait up to ``max_wait_s`` for the 1-minute load average to fall below BUSY_LOAD_PER_CPU per core;
    return the load when timing starts (warning when it is still high)."""
    cpus = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    while is_busy(load) and time.monotonic() < deadline:
        log.warning("the CPU is busy (load %.2f on %d cores): waiting for it to quieten before timing", load, cpus)
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    if is_busy(load):
        log.warning("timing under load %.2f on %d cores: the choice may be wrong; run `ctedge tune` again when "
                    "the box is idle", load, cpus)
    return load


def bundle_key(card: ModelCard) -> str:
    """Name, version and a hash of the card and every variant file: a changed bundle is tuned again."""
    digest = hashlib.sha256(card.path.read_bytes())
    for files in card.variants.values():
        for name in sorted(files.values()):
            path = card.bundle / name
            digest.update(path.read_bytes() if path.is_file() else b"")
    return f"{card.name}@{card.version}:{digest.hexdigest()[:16]}"


def cache_path(profile: Profile | None = None) -> Path:
    """Where this install's tune records live (module docstring); ``profile``: the one the command runs
    (a profile read from a file; the built-in defaults have no data folder)."""
    if os.environ.get("CTEDGE_TUNE_CACHE"):
        return Path(os.environ["CTEDGE_TUNE_CACHE"])
    if profile is not None and profile.source != Path():
        return profile.server.results_dir / "tuned.json"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ctedge" / "tuned.json"


def _read_cache(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("tune cache %s cannot be read (%s); it will be rewritten", path, exc)
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_cache(path: Path, doc: dict) -> None:
    """Write atomically, owner-only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Choice:
    """The variant and thread count recorded for one CPU and bundle."""

    variant: str
    threads: int
    ms_per_group: float
    tuned_at: str
    cpu: str
    runtime: str = "litert"          # records made before OpenVINO was measured are LiteRT's
    load: float = -1.0               # 1-minute load average when timed (-1: not recorded)

    def describe(self) -> str:
        load = f", load {self.load:.2f}" if self.load >= 0 else ""
        return (f"{self.variant} on {self.runtime}, {self.threads} thread(s): {self.ms_per_group:.1f} ms/group, "
                f"tuned {self.tuned_at}{load}")

    def age_days(self, now: datetime | None = None) -> float | None:
        """Days since the choice was timed (None when ``tuned_at`` is not a time)."""
        try:
            tuned = datetime.fromisoformat(self.tuned_at)
        except ValueError:
            return None
        return ((now or datetime.now(timezone.utc)) - tuned).total_seconds() / 86400


def tuned_choice(bundle: str | Path | ModelCard, cache: Path | None = None) -> Choice | None:
    """The recorded choice for this CPU and ``bundle``, or None (what ``ctedge doctor`` shows)."""
    card = bundle if isinstance(bundle, ModelCard) else load_card(bundle)
    entry = _read_cache(cache or cache_path()).get(cpu_key(), {}).get(bundle_key(card))
    if not entry or entry.get("variant") not in card.variants or entry.get("runtime", "litert") not in RUNTIMES:
        return None
    try:
        return Choice(**entry)
    except TypeError:
        return None


def eligible_variants(card: ModelCard) -> list[str]:
    """The CPU variants of the bundle whose ``fidelity.json`` record passes the thresholds; a bundle
    of one variant has nothing to choose between, so that variant (no fidelity report needed)."""
    if len(card.variants) == 1:
        return list(card.variants)
    path = card.bundle / "fidelity.json"
    try:
        fidelity = json.loads(path.read_text())["variants"]
    except FileNotFoundError:
        raise ModelLoadError(path, "not found: the bundle has no fidelity report (made by `ctedge quantize`), "
                                   "so no variant can be chosen by measurement; set model.variant") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(path, f"cannot be read as a fidelity report ({type(exc).__name__})") from None
    passing = []
    for variant in card.variants:
        r = fidelity.get(f"tflite_{variant}")
        if r and r.get("top1_agreement", 0) >= MIN_AGREEMENT and r.get("max_abs_prob_diff", 1) <= MAX_PROB_DIFF:
            passing.append(variant)
    if not passing:
        raise ModelLoadError(path, f"no variant passes the fidelity thresholds (agreement >= {MIN_AGREEMENT:.0%}, "
                                   f"max probability difference <= {MAX_PROB_DIFF})")
    return passing


def phantom_group(card: ModelCard, seed: int = 0) -> np.ndarray:
    """One model input made from a synthetic chest phantom (no patient data needed): a group, or for a
    2-D model (slice, image) the middle slice of that group."""
    from edge.phantom import make_phantom  # synthetic studies: never loaded by predict (tests/test_card.py)

    p = card.preprocessing
    hu = resize_slices(make_phantom(p.group_size, 2 * p.input_size, ground_glass=2, seed=seed).hu, p.input_size)
    images = clahe(lung_window(hu, p.window), p.clahe_clip)
    group = np.where(ThresholdSegmenter().segment(hu), images, 0).astype(np.uint8)
    return group if KINDS[card.kind].unit == "group" else group[len(group) // 2]


def study_group(card: ModelCard, study: Path) -> np.ndarray:
    """The first model input (group, slice or radiograph, by the card's kind) of a real study."""
    return KINDS[card.kind].units(PREPARE[card.modality](study, card.preprocessing))[0]


def candidates(card: ModelCard, variants: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (runtime, variant) pairs to measure for ``variants`` on this CPU, and one line per runtime
    skipped with its reason (OpenVINO not installed, bf16 not native here)."""
    pairs = [("litert", v) for v in variants]
    skipped = []
    reason = unavailable()
    if reason:
        return pairs, [f"openvino-f32, openvino-bf16: {reason}"]
    pairs += [("openvino-f32", v) for v in variants]
    if set(BF16_FLAGS) & set(cpu_identity()["flags"]):
        pairs += [("openvino-bf16", v) for v in variants]
    else:
        skipped.append(f"openvino-bf16: this CPU has no {' or '.join(BF16_FLAGS)} (OpenVINO would run f32)")
    return pairs, skipped


def fidelity_check(card: ModelCard, runtime: str, variant: str, units: Sequence[np.ndarray],
                   reference: Sequence[np.ndarray]) -> float:
    """Max probability difference of ``variant`` on ``runtime`` from ``reference`` (LiteRT float32's
    probabilities) over ``units``; infinity when a top-1 class differs."""
    classifier = KINDS[card.kind].classifier(card, variant, 1, runtime=runtime)
    worst = 0.0
    for unit, ref in zip(units, reference):
        probs = np.asarray(classifier.predict(unit), float)
        if int(np.argmax(probs)) != int(np.argmax(ref)):
            return float("inf")
        worst = max(worst, float(np.abs(probs - ref).max()))
    return worst


def time_variant(card: ModelCard, variant: str, threads: int, group: np.ndarray, repeats: int,
                 runtime: str = "litert") -> tuple[float, np.ndarray]:
    """Median ms per group over ``repeats`` (after one warm-up call) and the probabilities."""
    classifier = KINDS[card.kind].classifier(card, variant, threads, runtime=runtime)
    probs = classifier.predict(group)
    return _medians_in_turn([classifier.predict], group, repeats)[0], probs


def _medians_in_turn(predicts: Sequence[Callable[[np.ndarray], np.ndarray]], group: np.ndarray,
                    repeats: int) -> list[float]:
    """Median ms per call of each of ``predicts`` on ``group`` (already warmed up), over ``repeats``
    rounds of one call each, in turn."""
    times: list[list[float]] = [[] for _ in predicts]
    for _ in range(repeats):
        for predict, ms in zip(predicts, times):
            start = time.perf_counter()
            predict(group)
            ms.append((time.perf_counter() - start) * 1000.0)
    return [statistics.median(ms) for ms in times]


def tune(card: ModelCard, group: np.ndarray, max_threads: int | None = None, repeats: int = 5,
         variants: Sequence[str] | None = None, idle_wait_s: float = IDLE_WAIT_S) -> tuple[Choice, list[dict]]:
    """Once the CPU is idle (:func:`wait_for_idle`), time every candidate (:func:`candidates` of the
    eligible variants) with 1..``max_threads`` threads on ``group``; the fastest faithful one of the
    :func:`runoff` (with the load it was timed under) and all rows. A skipped or unfaithful candidate is a row with ``skipped``
    (its reason) and no time."""
    load = wait_for_idle(idle_wait_s)
    max_threads = max_threads or os.cpu_count() or 1
    variants = list(variants or eligible_variants(card))
    pairs, skipped = candidates(card, variants)
    rows: list[dict] = [{"runtime": line.partition(":")[0], "variant": "all", "threads": None, "skipped": line.partition(": ")[2]}
                        for line in skipped]
    checks: list[np.ndarray] = []
    references: list[np.ndarray] = []
    first = None
    for runtime, variant in pairs:
        diff = None
        if runtime != "litert":
            if not checks:
                checks = [group, *(phantom_group(card, seed) for seed in FIDELITY_SEEDS)]
                base = KINDS[card.kind].classifier(card, "float32" if "float32" in card.variants else variant, 1)
                references = [np.asarray(base.predict(u), float) for u in checks]
            try:
                diff = fidelity_check(card, runtime, variant, checks, references)
            except ModelLoadError as exc:
                rows.append({"runtime": runtime, "variant": variant, "threads": None, "skipped": exc.problem})
                continue
            if diff > MAX_PROB_DIFF:
                rows.append({"runtime": runtime, "variant": variant, "threads": None, "max_prob_diff_vs_float32":
                             None if diff == float("inf") else round(diff, 6),
                             "skipped": f"not faithful to LiteRT float32 (top-1 differs or max |dp| > {MAX_PROB_DIFF})"})
                continue
        for threads in range(1, max_threads + 1):
            ms, probs = time_variant(card, variant, threads, group, repeats, runtime)
            first = probs if first is None else first
            rows.append({"runtime": runtime, "variant": variant, "threads": threads, "ms_per_group_median": round(ms, 2),
                         "max_prob_diff_vs_first": round(float(np.abs(probs - first).max()), 6),
                         "max_prob_diff_vs_float32": None if diff is None else round(diff, 6)})
    best = runoff(card, [r for r in rows if "skipped" not in r], group, repeats)
    choice = Choice(best["variant"], best["threads"], best.get("runoff_ms_per_group_median", best["ms_per_group_median"]),
                    datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu_key(), best["runtime"], round(load, 2))
    return choice, rows


def runoff(card: ModelCard, timed: list[dict], group: np.ndarray, repeats: int) -> dict:
    """The fastest of the sweep's :data:`RUNOFF` fastest rows of ``timed``, timed again in turn with
    the fastest LiteRT float32 row as a yardstick: one call each per round (after a warm-up), so that
    a busy spell of a shared machine slows them all rather than the one it fell on. Each row of the
    run-off gets ``runoff_ms_per_group_median``; a sweep of one row is its own choice."""
    finalists = sorted(timed, key=lambda r: r["ms_per_group_median"])[:RUNOFF]
    yardstick = min((r for r in timed if (r["runtime"], r["variant"]) == ("litert", "float32")),
                    key=lambda r: r["ms_per_group_median"], default=None)
    if yardstick is not None and yardstick not in finalists:
        finalists.append(yardstick)
    if len(finalists) == 1:
        return finalists[0]
    predicts = [KINDS[card.kind].classifier(card, r["variant"], r["threads"], runtime=r["runtime"]).predict
                for r in finalists]
    for predict in predicts:
        predict(group)
    for row, ms in zip(finalists, _medians_in_turn(predicts, group, max(repeats, 3))):
        row["runoff_ms_per_group_median"] = round(ms, 2)
    return min(finalists, key=lambda r: r["runoff_ms_per_group_median"])


def record(card: ModelCard, choice: Choice, cache: Path | None = None) -> Path:
    """Store ``choice`` for this CPU and bundle in the tune cache; return the cache path."""
    path = cache or cache_path()
    doc = _read_cache(path)
    doc.setdefault(choice.cpu, {})[bundle_key(card)] = asdict(choice)
    _write_cache(path, doc)
    return path


def fallback_variant(card: ModelCard) -> str:
    """The variant run where none is tuned for this CPU: int8, else the card's first, among those that
    pass the bundle's fidelity thresholds (:func:`eligible_variants`; all, when it has no readable
    fidelity report): a bundle whose int8 model disagrees with its float32 model runs float32."""
    try:
        eligible = eligible_variants(card)
    except ModelLoadError:
        eligible = list(card.variants)
    return FALLBACK_VARIANT if FALLBACK_VARIANT in eligible else eligible[0]


def resolve(card: ModelCard, model: ModelSettings, tune_if_missing: bool = False,
            cache: Path | None = None) -> tuple[str, str, int, str]:
    """The variant, runtime and threads that ``card``'s bundle runs under the profile's ``model``
    settings, and how they were chosen (an explicit variant runs on LiteRT; a tuned choice on a
    runtime that is no longer installed falls back as if untuned). The variant asked of the bundle (``ModelSettings.variant_of``) ``auto``
    takes the tuned choice for this CPU (tuning now with a phantom group when ``tune_if_missing``,
    else falling back to int8; with ``tune_if_missing`` a choice timed on a busy CPU is timed again
    when the CPU is idle now, else kept with a warning); ``model.threads`` 0 takes the tuned thread count (else all cores).
    ``cache``: the install's tune records (:func:`cache_path`)."""
    variant, why = model.variant_of(card)
    threads = model.threads
    if variant != AUTO:
        return variant, "litert", threads or os.cpu_count() or 1, "set by the profile or flags"
    why = f"{why}: " if why else ""
    cache = cache or cache_path()
    choice = tuned_choice(card, cache)
    if choice is not None and choice.runtime != "litert" and unavailable():
        log.warning("the tuned choice runs on %s, which cannot be used now (%s): run `ctedge tune` again",
                    choice.runtime, unavailable())
        choice = None
    reason = "no tuned model variant for this CPU, runtime and bundle yet"
    if choice is not None and tune_if_missing and choice.load >= 0 and is_busy(choice.load):
        load = os.getloadavg()[0]
        if is_busy(load):
            log.warning("the tuned choice for %s was timed on a busy CPU (load %.2f) and the CPU is busy now too "
                        "(load %.2f): keeping it until a start on an idle CPU (or run `ctedge tune` then)",
                        card.name, choice.load, load)
        else:
            reason = f"the tuned choice for {card.name} was timed on a busy CPU (load {choice.load:.2f}), " \
                     f"the CPU is idle now (load {load:.2f})"
            choice = None
    if choice is None and tune_if_missing:
        log.warning("%s: measuring the variants once", reason)
        choice, _ = tune(card, phantom_group(card), repeats=3)
        try:
            log.warning("tuned: %s (recorded in %s)", choice.describe(), record(card, choice, cache))
        except OSError as exc:
            log.warning("tuned: %s; not recorded (%s: %s), so it is measured again at the next start",
                        choice.describe(), cache, exc.strerror)
    if choice is None:
        fallback = fallback_variant(card)
        log.info("no tuned model variant for this CPU: using %s; run `ctedge tune` to measure", fallback)
        return fallback, "litert", threads or os.cpu_count() or 1, f"{why}default (not tuned on this CPU: run ctedge tune)"
    return choice.variant, choice.runtime, threads or choice.threads, f"{why}tuned on this CPU ({choice.tuned_at})"

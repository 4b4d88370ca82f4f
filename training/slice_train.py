"""Training of 2-D models: edge kind ``slice``, one classifier of the named architecture
(``training.archs``) on every kept CT slice, read through ``edge.pipeline.prepare_study``; or, with
``modality`` xray, kind ``image``, on one chest radiograph per study (``prepare_radiograph``).

Labels: each kept slice gets its patient's class (three classes), or, with a slice-labels CSV
(``edge.selection_report.read_labels``), its own label (two classes, ``infection`` / ``none``;
kept slices the CSV does not list are left out, and so are studies it does not label at all). With ``freeze_epochs``, the trunk is frozen and
only the head trained first (for a trunk loaded from ``--weights``), then everything; each stage stops
early on the validation loss, and the run keeps the weights of the best validation epoch of either stage.
X-ray runs are augmented with the published warp (``training.augment.XRAY_WARP``), CT runs with one
random augmentation per slice; validation images never are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import tf_keras as keras

from edge import CLASSES
from edge.card import DEMONSTRATION_BANNER
from edge.errors import UserError
from edge.options import PipelineOptions
from edge.selection_report import read_labels
from training.archs import build_slice_model, make_optimizer
from training.augment import AUGMENTATIONS, XRAY_WARP, xray_augment
from training.data import StudyRecord, patient_split
from training.models import StandardizedConv2D
from training.plots import plot_training_curves
from training.recipes import RECIPES, Recipe, learning_rate
from training.train import SliceBatches, prepare_records, write_run_preprocessing
from training.trunk import weights_provenance

log = logging.getLogger(__name__)

MODEL_FILE = "slice_model.keras"
KIND_OF_MODALITY = {"ct": "slice", "xray": "image"}   # the edge kind (edge.card.KIND_MODALITY) a 2-D model of each modality is
SLICE_LABEL_CLASSES = ("infection", "none")


@dataclass(frozen=True)
class SliceTrainConfig:
    """Everything that decides a slice training run; saved as config.json in the run folder."""

    arch: str = "small-cnn"
    recipe: str = "default"
    learning_rate: float | None = None   # the recipe's base rate when None
    epochs: int = 30
    freeze_epochs: int = 0             # head-only epochs first, trunk frozen
    batch_size: int = 16
    patience: int = 10
    augment: bool = True
    val_fraction: float = 0.2
    seed: int = 0
    weights: str | None = None         # local pretrained trunk weights
    slice_labels: str | None = None    # CSV patient_folder,file,infection: two-class slice labels
    patient_rule: dict = field(default_factory=lambda: {"name": "fraction", "threshold": 0.1})
    preprocessing: PipelineOptions = field(default_factory=PipelineOptions)
    modality: str = "ct"               # ct: every kept slice of CT studies (kind slice); xray: one radiograph per study (kind image)
    folds: int = 0                     # X-ray: k-fold cross-validation of the non-hold-out patients (0: one train/val split)
    test_fraction: float = 0.0         # X-ray, CT slice images: hold-out patients (groups) per class, never used in training or model selection
    feature_cache: str | None = None   # folder of cached trunk features: the frozen-trunk stage trains the head on them
    fine_tune_from: str | None = None  # after the head stage, train only the trunk from this layer on (BatchNorm stays frozen)
    slice_classes: tuple[str, ...] | None = None   # CT slice images: the classes of their manifest (negative last)

    @property
    def kind(self) -> str:
        return KIND_OF_MODALITY[self.modality]

    @property
    def recipe_spec(self) -> Recipe:
        recipe = RECIPES[self.recipe]
        return replace(recipe, learning_rate=self.learning_rate) if self.learning_rate else recipe

    @property
    def mixup_alpha(self) -> float:    # read by SliceBatches
        return self.recipe_spec.mixup_alpha

    @property
    def classes(self) -> tuple[str, ...]:
        if self.slice_classes:
            return tuple(self.slice_classes)
        return SLICE_LABEL_CLASSES if self.slice_labels else CLASSES

    @property
    def augmentation(self) -> dict | None:
        """What the training images get (recorded in config.json); None when off."""
        if not self.augment:
            return None
        if self.modality == "xray":
            cached = {"frozen_stage": "none: the head trains on cached features of the unaugmented images"}
            return {"warp": asdict(XRAY_WARP)} | (cached if self.feature_cache else {})
        return {"one_random_of": list(AUGMENTATIONS), "random_crop": self.recipe_spec.random_crop}


@dataclass
class SliceRun:
    model: keras.Model
    gradcam_layer: str
    history: dict[str, list[float]]
    split: dict[str, list[str]]
    selected: dict                     # the kept epoch: stage, epoch (1-based) and its monitored loss


class RecipeBatches(SliceBatches):
    """SliceBatches with the recipe's random crop (up to ``crop`` of each side cut, resized back) and,
    for X-ray, the published warp in place of the random augmentation."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, config: SliceTrainConfig):
        super().__init__(x, y, n_classes, config)  # type: ignore[arg-type]
        self.crop = config.recipe_spec.random_crop

    def augment_image(self, image: np.ndarray) -> np.ndarray:
        return xray_augment(image, self.rng) if self.config.modality == "xray" else super().augment_image(image)  # type: ignore[attr-defined]

    def __getitem__(self, i: int):
        x, y = super().__getitem__(i)
        if self.crop > 0:
            x = np.stack([_random_crop(s[..., 0], self.crop, self.rng)[..., None] for s in x])
        return x, y


def _random_crop(image: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    top, left = (int(rng.uniform(0, fraction) * n) for n in (h, w))
    bottom, right = (int(rng.uniform(0, fraction) * n) for n in (h, w))
    return cv2.resize(image[top:h - bottom, left:w - right], (w, h), interpolation=cv2.INTER_LINEAR)


def labelled_slices(prepared, config: SliceTrainConfig, labels: dict[tuple[str, str], int] | None
                    ) -> tuple[np.ndarray, np.ndarray, list]:
    """Kept slices (N, size, size, 1) uint8 of the prepared studies, their class indices in
    ``config.classes`` (the patient's class, or the CSV's slice label: 1 = infection, index 0), and
    the prepared studies that contributed."""
    xs, ys, used = [], [], []
    for p in prepared:
        study = p.study
        kept = study.selection.kept_indices
        if labels is None:
            xs.append(study.images[kept])
            ys.append(np.full(len(kept), CLASSES.index(p.record.label)))
            used.append(p)
            continue
        folder = Path(p.record.path).name
        found = [(i, labels[(folder, study.volume.files[i])]) for i in kept if (folder, study.volume.files[i]) in labels]
        if not found:
            log.warning("%s: no kept slice of study %s is labelled (patient_folder %r): left out",
                        config.slice_labels, p.record.path, folder)
            continue
        xs.append(study.images[[i for i, _ in found]])
        ys.append(np.array([0 if infected else 1 for _, infected in found]))
        used.append(p)
    if not xs:
        size = config.preprocessing.input_size
        return np.zeros((0, size, size, 1), np.uint8), np.zeros(0, int), used
    return np.concatenate(xs)[..., None], np.concatenate(ys), used


def train_slice_run(records: list[StudyRecord], run_dir: Path, config: SliceTrainConfig,
                    split: dict[str, list[StudyRecord]] | None = None) -> SliceRun:
    """Split by patient (or use ``split``'s ``train`` and ``val``), train the slice model (early stopping,
    the recipe's schedule and the kept epoch all watch ``val``), and save the run folder:
    slice_model.keras, config.json (with kind, classes, the Grad-CAM layer, the augmentation and the
    kept epoch), preprocessing.json, history.json, split.json, training curves."""
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = read_labels(config.slice_labels) if config.slice_labels else None
    split = split or patient_split(records, val_fraction=config.val_fraction, seed=config.seed)
    train = prepare_records(split["train"], config.preprocessing, config.modality)
    val = prepare_records(split["val"], config.preprocessing, config.modality)
    x, y, used = labelled_slices(train, config, labels)
    if not len(x):
        raise UserError(config.slice_labels or "data", "no labelled slice to train on")
    xv, yv, used_val = labelled_slices(val, config, labels)
    write_run_preprocessing(run_dir, config.preprocessing, [p.study for p in used + used_val])
    split_names = {k: [r.patient for r in v] for k, v in split.items()}
    return fit_slice_run(x, y, xv, yv, run_dir, config, split_names, demonstration=len(records) < 30)


def fit_slice_run(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, run_dir: Path,
                  config: SliceTrainConfig, split_names: dict, demonstration: bool = False) -> SliceRun:
    """Train the slice model on (N, size, size, 1) uint8 slices ``x`` with class indices ``y`` in
    ``config.classes``; ``xv``/``yv`` (may be empty) drive early stopping, the schedule and the kept
    epoch. Saves slice_model.keras, config.json, history.json, split.json and the training curves
    in ``run_dir`` (preprocessing.json is the caller's)."""
    n = len(config.classes)
    keras.utils.set_random_seed(config.seed)
    size = config.preprocessing.input_size
    built = build_slice_model(config.arch, size, n, Path(config.weights) if config.weights else None)
    model = built.model
    counts = np.bincount(y, minlength=n)
    weights = {k: len(y) / (np.count_nonzero(counts) * c) for k, c in enumerate(counts) if c}
    monitor = "val_loss" if len(xv) else "loss"
    history: dict[str, list[float]] = {}
    best: tuple[float, list[np.ndarray], dict] | None = None
    stages = [("head", config.freeze_epochs, True), ("all", config.epochs, False)]
    for stage, epochs, frozen in stages:
        if epochs <= 0:
            continue
        try:
            frozen_layers = built.trunk_layers if frozen else built.frozen_for_fine_tuning(config.fine_tune_from)
        except ValueError as exc:
            raise UserError("--fine-tune-from", str(exc)) from exc
        for layer in model.layers:
            layer.trainable = layer.name not in frozen_layers
        stopper = keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True)
        fitted = [_schedule(config.recipe_spec, monitor), stopper]
        if frozen and config.feature_cache:
            fit = _fit_head_on_features(model, (x, y), (xv, yv), n, config, epochs, weights, fitted)
        else:
            model.compile(optimizer=make_optimizer(config.recipe_spec), loss="categorical_crossentropy", metrics=["accuracy"])
            fit = model.fit(
                RecipeBatches(x, y, n, config),
                validation_data=(xv.astype(np.float32), np.eye(n)[yv]) if len(xv) else None,
                epochs=epochs, class_weight=weights, verbose=2, callbacks=fitted)
        for key, values in fit.history.items():
            history.setdefault(f"{stage}_{key}", []).extend(map(float, values))
        if best is None or stopper.best < best[0]:    # the stopper restored its stage's best epoch
            best = (stopper.best, model.get_weights(), {"stage": stage, "epoch": stopper.best_epoch + 1, monitor: stopper.best})
    if best is not None:
        model.set_weights(best[1])
    selected = best[2] if best else {}
    model.save(run_dir / MODEL_FILE)
    doc = asdict(config) | {"kind": config.kind, "classes": list(config.classes), "gradcam_layer": built.gradcam_layer,
                            "augmentation": config.augmentation, "selected_epoch": selected,
                            "n_train_slices": len(y), "n_val_slices": len(yv),
                            "weights_file": weights_provenance(config.weights) if config.weights else None}
    (run_dir / "config.json").write_text(json.dumps(doc, indent=2, default=str))
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    (run_dir / "split.json").write_text(json.dumps(split_names, indent=2))
    curves = {k.removeprefix("all_"): v for k, v in history.items() if k.startswith("all_") and k != "all_lr"}
    if curves:
        plot_training_curves(curves, run_dir / "training_slices.png", title=f"Training, {config.arch} slices",
                             note=DEMONSTRATION_BANNER.lower() if demonstration else "")
    return SliceRun(model, built.gradcam_layer, history, split_names, selected)


def _fit_head_on_features(model: keras.Model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                          n: int, config: SliceTrainConfig, epochs: int, weights: dict, callbacks: list):
    """The frozen-trunk stage on cached pooled features (``training.feature_cache``): the model's own
    dropout and ``logits`` layers, trained alone on the features of the unaugmented images, then their
    weights set in ``model``. Returns the Keras history."""
    from training.feature_cache import pooled_features

    assert config.feature_cache is not None, "called only with a feature cache"
    cache = Path(config.feature_cache)
    f = pooled_features(model, train[0], cache)
    fv = pooled_features(model, val[0], cache)
    inputs = keras.Input(f.shape[1:], name="features")
    logits = model.get_layer("logits")
    y = logits(model.get_layer("dropout")(inputs))          # the model's layers, shared: trained in place
    head = keras.Model(inputs, model.get_layer("probabilities")(y))
    head.compile(optimizer=make_optimizer(config.recipe_spec), loss="categorical_crossentropy", metrics=["accuracy"])
    return head.fit(f, np.eye(n)[train[1]], batch_size=config.batch_size, shuffle=True,
                    validation_data=(fv, np.eye(n)[val[1]]) if len(fv) else None,
                    epochs=epochs, class_weight=weights, verbose=2, callbacks=callbacks)


def _schedule(recipe: Recipe, monitor: str) -> keras.callbacks.Callback:
    """The recipe's learning-rate schedule: ReduceLROnPlateau on ``monitor``, or the epoch schedule."""
    if recipe.plateau_patience:
        return keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=recipe.decay_factor,
                                                 patience=recipe.plateau_patience, verbose=1)
    return keras.callbacks.LearningRateScheduler(lambda e, _: learning_rate(recipe, e))


def is_slice_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a slice model (else it is a CNN + biLSTM run)."""
    return (run_dir / MODEL_FILE).is_file()


def load_slice_run(run_dir: Path) -> tuple[keras.Model, dict]:
    """The Keras slice model and config.json of a run folder written by :func:`train_slice_run`."""
    path, config = run_dir / MODEL_FILE, run_dir / "config.json"
    try:
        model = keras.models.load_model(path, compile=False, custom_objects={"StandardizedConv2D": StandardizedConv2D})
        doc = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(path, f"cannot be loaded as a slice model run ({exc})") from exc
    missing = [k for k in ("kind", "classes", "gradcam_layer", "patient_rule") if k not in doc]
    if missing:
        raise UserError(config, f"missing {missing[0]!r}: not a slice run of ctedge train --arch")
    return model, doc


def with_input_size(config: SliceTrainConfig, size: int) -> SliceTrainConfig:
    """``config`` with the model input canvas set to ``size`` pixels."""
    return replace(config, preprocessing=replace(config.preprocessing, input_size=size))

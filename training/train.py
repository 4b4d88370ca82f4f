"""Two-stage training of the compact CNN + bidirectional-LSTM classifier of the seed design.

Stage 1 trains the CNN encoder on single slices labelled with their patient's class (categorical
cross-entropy, Adam lr 1e-4, early stopping with patience 25). Stage 2 freezes it and trains the
biLSTM head on 50-slice groups. Both stages read studies through ``edge.pipeline.prepare_study``,
so training sees exactly what the edge runtime will see.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tf_keras as keras
from tqdm import tqdm

from edge import CLASSES
from edge.card import DEMONSTRATION_BANNER, TrainingRange
from edge.errors import UserError
from edge.options import PipelineOptions
from edge.pipeline import PREPARE, PreparedStudy
from edge.vote import patient_verdict
from training.augment import augment_group, mixup, random_augment
from training.data import StudyRecord, class_weights, one_hot, patient_split
from training.models import build_encoder, build_head, build_slice_classifier, predict_group
from training.optimizers import Lamb
from training.plots import plot_training_curves

PREPROCESSING_FILE = "preprocessing.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as config.json in the run folder."""

    cnn_epochs: int = 100
    head_epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    patience: int = 25
    optimizer: str = "adam"            # or "lamb"
    augment: bool = True
    mixup_alpha: float = 0.0           # 0 = no mixup
    filters: tuple[int, ...] = (16, 32, 64, 128)
    lstm_units: int = 64
    val_fraction: float = 0.2
    test_fraction: float = 0.0         # held out: used neither for fitting nor for early stopping
    seed: int = 0
    preprocessing: PipelineOptions = field(default_factory=PipelineOptions)   # becomes the model card's


@dataclass
class PreparedRecord:
    record: StudyRecord
    study: PreparedStudy

    @property
    def label_index(self) -> int:
        return CLASSES.index(self.record.label)


@dataclass
class TrainResult:
    encoder: keras.Model
    head: keras.Model
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    split: dict[str, list[str]] = field(default_factory=dict)


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    if config.optimizer == "lamb":
        return Lamb(config.learning_rate)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adam or lamb")


def prepare_records(records: list[StudyRecord], options: PipelineOptions, modality: str = "ct") -> list[PreparedRecord]:
    """Preprocess every study of ``modality`` with the edge pipeline, with a progress bar."""
    prepare = PREPARE[modality]
    return [PreparedRecord(r, prepare(r.path, options)) for r in tqdm(records, desc="preprocessing studies")]


def slice_arrays(prepared: list[PreparedRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Kept slices of every study as (N, 256, 256, 1) uint8 and their patient's class indices."""
    x = [p.study.images[p.study.selection.kept_indices] for p in prepared]
    y = [np.full(len(s), p.label_index) for s, p in zip(x, prepared)]
    return np.concatenate(x)[..., None], np.concatenate(y)


class SliceBatches(keras.utils.Sequence):
    """Shuffled batches of augmented slices (random augmentation type and range; optional mixup)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, config: TrainConfig):
        super().__init__()
        self.x, self.y, self.n_classes, self.config = x, y, n_classes, config
        self.rng = np.random.default_rng(config.seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return int(np.ceil(len(self.x) / self.config.batch_size))

    def __getitem__(self, i: int):
        idx = self.order[i * self.config.batch_size:(i + 1) * self.config.batch_size]
        x = self.x[idx]
        if self.config.augment:
            x = np.stack([self.augment_image(s[..., 0])[..., None] for s in x])
        y = np.eye(self.n_classes, dtype=np.float32)[self.y[idx]]
        x = x.astype(np.float32)
        if self.config.mixup_alpha > 0:
            x, y = mixup(x, y, self.config.mixup_alpha, self.rng)
        return x, y

    def augment_image(self, image: np.ndarray) -> np.ndarray:
        """One training image (H, W) augmented: one random type and range (``random_augment``)."""
        return random_augment(image, self.rng)

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))


def callbacks(config: TrainConfig, checkpoint: Path, monitor: str) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor=monitor, save_best_only=True),
    ]


def train_slice_model(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      n_classes: int, config: TrainConfig, run_dir: Path) -> tuple[keras.Model, keras.Model, dict]:
    """Stage 1: train encoder + softmax on slices. Returns (encoder, slice classifier, history)."""
    keras.utils.set_random_seed(config.seed)
    size = config.preprocessing.input_size
    encoder = build_encoder(input_shape=(size, size, 1), filters=config.filters)
    model = build_slice_classifier(encoder, n_classes=n_classes)
    model.compile(optimizer=make_optimizer(config), loss="categorical_crossentropy", metrics=["accuracy"])
    weights = class_weights([CLASSES[i] for i in y_train]) if n_classes == len(CLASSES) else None
    has_val = len(x_val) > 0
    history = model.fit(
        SliceBatches(x_train, y_train, n_classes, config),
        validation_data=(x_val.astype(np.float32), np.eye(n_classes)[y_val]) if has_val else None,
        epochs=config.cnn_epochs, class_weight=weights, verbose=2,
        callbacks=callbacks(config, run_dir / "slice_model.best.keras", "val_loss" if has_val else "loss"),
    )
    return encoder, model, history.history


def group_features(encoder: keras.Model, prepared: list[PreparedRecord], config: TrainConfig,
                   augment_rounds: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features of every group: (G, 50, F) float32 and the class index of each group.

    With ``augment_rounds`` > 0, each study also contributes that many augmented copies of its groups.
    """
    rng = np.random.default_rng(config.seed)
    feats, labels = [], []
    for p in prepared:
        for group in p.study.groups():
            for r in range(1 + augment_rounds):
                g = augment_group(group, rng) if r else group
                feats.append(encoder.predict(g[..., None].astype(np.float32), verbose=0, batch_size=50))
                labels.append(p.label_index)
    return np.stack(feats).astype(np.float32), np.array(labels)


def train_head_model(encoder: keras.Model, train: list[PreparedRecord], val: list[PreparedRecord],
                     config: TrainConfig, run_dir: Path) -> tuple[keras.Model, dict]:
    """Stage 2: freeze the encoder and train the biLSTM head on 50-slice groups."""
    encoder.trainable = False
    x, y = group_features(encoder, train, config, augment_rounds=4 if config.augment else 0)
    xv, yv = group_features(encoder, val, config) if val else (np.zeros((0,) + x.shape[1:]), np.zeros(0, int))
    head = build_head(n_slices=x.shape[1], feature_dim=x.shape[2], lstm_units=config.lstm_units)
    head.compile(optimizer=make_optimizer(config), loss="categorical_crossentropy", metrics=["accuracy"])
    has_val = len(xv) > 0
    history = head.fit(
        x, one_hot([CLASSES[i] for i in y]), batch_size=config.batch_size, epochs=config.head_epochs,
        validation_data=(xv, one_hot([CLASSES[i] for i in yv])) if has_val else None, verbose=2, shuffle=True,
        callbacks=callbacks(config, run_dir / "head.best.keras", "val_loss" if has_val else "loss"),
    )
    return head, history.history


def predict_study(encoder: keras.Model, head: keras.Model, study: PreparedStudy) -> np.ndarray:
    """Group probabilities (G, 3) of one prepared study with the Keras models."""
    return np.stack([predict_group(encoder, head, g) for g in study.groups()])


def load_run_models(run_dir: Path) -> tuple[keras.Model, keras.Model]:
    """The Keras encoder and head of a run folder written by :func:`train_classifier`."""
    models = []
    for name in ("encoder.keras", "head.keras"):
        path = run_dir / name
        if not path.is_file():
            raise UserError(path, "missing: not a run folder of ctedge train")
        try:
            models.append(keras.models.load_model(path))
        except (OSError, ValueError) as exc:
            raise UserError(path, f"cannot be loaded as a Keras model ({exc})") from exc
    return models[0], models[1]


def write_run_preprocessing(run_dir: Path, options: PipelineOptions, studies: list[PreparedStudy]) -> None:
    """Save the options the run was trained with and the geometry range of its studies, which
    ``ctedge quantize`` copies into the model card."""
    volumes = [s.volume for s in studies]
    ranges = TrainingRange.of([v.slice_thickness_mm for v in volumes if v.slice_thickness_mm is not None],
                              [v.pixel_spacing_mm for v in volumes if v.pixel_spacing_mm is not None])
    doc = {"preprocessing": asdict(options), "training_range": ranges.to_dict()}
    (run_dir / PREPROCESSING_FILE).write_text(json.dumps(doc, indent=2))


def read_run_preprocessing(run_dir: Path) -> tuple[PipelineOptions, TrainingRange]:
    """The options and training range a run folder was trained with (see :func:`write_run_preprocessing`)."""
    path = run_dir / PREPROCESSING_FILE
    try:
        doc = json.loads(path.read_text())
        ranges = {k: v for k, v in doc["training_range"].items() if v}
        return PipelineOptions(**doc["preprocessing"]), TrainingRange.of(ranges.get("slice_thickness_mm", []),
                                                                         ranges.get("pixel_spacing_mm", []))
    except FileNotFoundError as exc:
        raise UserError(path, "missing: not a run folder of ctedge train (or trained before 0.3; retrain)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc


def train_classifier(records: list[StudyRecord], run_dir: Path, config: TrainConfig = TrainConfig(),
                     split: dict[str, list[StudyRecord]] | None = None) -> TrainResult:
    """Split by patient (or use ``split``), run both stages on ``train`` (early stopping on ``val``; the
    ``test`` part is never seen), save models, config, history, split and training curves to ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    split = split or patient_split(records, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                                   seed=config.seed)
    options = config.preprocessing
    train, val = prepare_records(split["train"], options), prepare_records(split["val"], options)
    write_run_preprocessing(run_dir, options, [p.study for p in train + val])
    x, y = slice_arrays(train)
    xv, yv = slice_arrays(val) if val else (np.zeros((0,) + x.shape[1:], np.uint8), np.zeros(0, int))
    encoder, _, h1 = train_slice_model(x, y, xv, yv, len(CLASSES), config, run_dir)
    head, h2 = train_head_model(encoder, train, val, config, run_dir)
    encoder.save(run_dir / "encoder.keras")
    head.save(run_dir / "head.keras")
    result = TrainResult(encoder, head, {"cnn": h1, "head": h2},
                         {k: [r.patient for r in v] for k, v in split.items()})
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    (run_dir / "history.json").write_text(json.dumps(result.history, indent=2, default=float))
    (run_dir / "split.json").write_text(json.dumps(result.split, indent=2))
    for stage, history in result.history.items():
        plot_training_curves(history, run_dir / f"training_{stage}.png", title=f"Training, {stage} stage",
                             note=DEMONSTRATION_BANNER.lower() if len(records) < 30 else "")
    return result


def patient_predictions(encoder: keras.Model, head: keras.Model, prepared: list[PreparedRecord],
                        override: float = 0.9) -> list[dict]:
    """Group- and patient-level predictions of each study after the voting rule."""
    out = []
    for p in prepared:
        probs = predict_study(encoder, head, p.study)
        verdict = patient_verdict(probs, override)
        out.append({"patient": p.record.patient, "label": p.record.label, "group_probs": probs.tolist(),
                    "verdict": verdict.label, "patient_probs": [verdict.probabilities[c] for c in CLASSES]})
    return out


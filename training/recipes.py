"""Architecture names and training recipes, without TensorFlow: what ``ctedge train --help`` lists
on an edge install. The models themselves are built by ``training.archs``."""

from __future__ import annotations

from dataclasses import dataclass

GROUP_ARCH = "cnn-bilstm"    # the group model (edge kind "group"); every other name is a slice model

ARCH_INFO: dict[str, tuple[int, str]] = {   # name -> (default input canvas, px; where it comes from)
    "resnet50v2-fpn": (224, "seed 002: Rahimzadeh et al. 2021"),
    "densenet121": (224, "Alshazly et al. 2021 (seed 001)"),
    "bit-r50x1": (128, "seed 004: Zhao et al. 2021, BiT-M R50x1"),
    "small-cnn": (128, "compact CNN of the seed design, for demonstrations"),
    **{name: (299 if name in ("xception", "inceptionv3") else 224, "seed 001: Keras application")
       for name in ("resnet50v2", "resnet101v2", "densenet169", "densenet201", "xception", "inceptionv3",
                    "mobilenetv2", "efficientnetb0")},
}


@dataclass(frozen=True)
class Recipe:
    """A training recipe: optimiser, learning-rate schedule and augmentation."""

    optimizer: str                 # adam | lamb | nadam | sgd
    learning_rate: float
    weight_decay: float = 0.0      # LAMB's decoupled weight decay
    warmup_epochs: int = 0         # linear warm-up from 0
    decay_every: int = 0           # step schedule: multiply by decay_factor every this many epochs (0: constant)
    decay_factor: float = 0.1      # the factor of each step, or of each plateau
    plateau_patience: int = 0      # ReduceLROnPlateau: multiply by decay_factor after this many epochs without
                                   # a lower validation loss (0: off; replaces the step schedule)
    mixup_alpha: float = 0.0
    random_crop: float = 0.0       # crop up to this fraction of each side, resized back (0: off)
    note: str = ""


RECIPES: dict[str, Recipe] = {
    "default": Recipe("adam", 1e-4, note="Adam 1e-4, as the CNN + biLSTM"),
    "seed-001": Recipe("lamb", 1e-3, weight_decay=1e-4, decay_every=10, decay_factor=0.5,
                       note="seed 001 (Alshazly et al.): LAMB with weight decay, step schedule"),
    "seed-002": Recipe("nadam", 1e-4, note="seed 002 (Rahimzadeh et al.): Nadam"),
    "seed-004": Recipe("sgd", 3e-3, warmup_epochs=2, decay_every=10, decay_factor=0.1, mixup_alpha=0.1,
                       random_crop=0.1, note="seed 004 (Zhao et al., BiT): SGD momentum 0.9, warm-up, step decay, "
                                             "mixup, random crop"),
    "xray": Recipe("adam", 1e-4, decay_factor=0.1, plateau_patience=3,
                   note="chest X-ray after Luiz et al. (Adam, ReduceLROnPlateau; the rates were not checked against "
                        "the paper): Adam 1e-4, cut tenfold after 3 epochs without a lower validation loss"),
}
DEFAULT_RECIPE = {"ct": "default", "xray": "xray"}    # by --modality


def learning_rate(recipe: Recipe, epoch: int) -> float:
    """The recipe's learning rate for ``epoch`` (0-based): linear warm-up, then the step schedule."""
    if epoch < recipe.warmup_epochs:
        return recipe.learning_rate * (epoch + 1) / (recipe.warmup_epochs + 1)
    steps = (epoch - recipe.warmup_epochs) // recipe.decay_every if recipe.decay_every else 0
    return recipe.learning_rate * recipe.decay_factor ** steps

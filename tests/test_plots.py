import cv2
import numpy as np
import pytest

from edge.plots import plot_confusion, plot_roc
from training.plots import plot_training_curves

PNG = b"\x89PNG\r\n\x1a\n"


def check_png(path):
    assert path.read_bytes()[:8] == PNG
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 200


def test_plots_write_readable_pngs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    prob = rng.dirichlet(np.ones(3), 60)
    check_png(plot_roc(y, prob, tmp_path / "roc.png", note="demonstration model - not for clinical use"))
    check_png(plot_confusion(np.array([[5, 1, 0], [2, 3, 1], [0, 0, 6]]), tmp_path / "cm.png"))
    check_png(plot_training_curves({"loss": [1.0, 0.7], "val_loss": [1.1, 0.9], "accuracy": [0.4, 0.6]},
                                   tmp_path / "curves.png"))


def test_plots_refuse_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError):
        plot_roc([0, 1], np.ones((3, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_confusion(np.ones((2, 2)), tmp_path / "y.png")
    with pytest.raises(ValueError):
        plot_training_curves({"accuracy": [0.5]}, tmp_path / "z.png")

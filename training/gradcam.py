"""Grad-CAM (Selvaraju et al. 2017) on the CNN encoder's last convolution, and the seed's
consistency check: a heatmap should move with the image when the image is rotated or shifted."""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf
import tf_keras as keras

from edge.explain import normalise

LAST_CONV = "conv4"
PERTURBATIONS: tuple[tuple[str, float, tuple[int, int]], ...] = (
    ("rotate clockwise", -15.0, (0, 0)),
    ("rotate counter-clockwise", 15.0, (0, 0)),
    ("translate (30, -15)", 0.0, (30, -15)),
    ("translate (-20, 15)", 0.0, (-20, 15)),
)


def _raw_cams(conv: tf.Tensor, grads: tf.Tensor) -> np.ndarray:
    """ReLU of the channel maps weighted by their mean gradient, at the convolution's resolution."""
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()


def _cams(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return normalise(np.stack([cv2.resize(c, size[::-1], interpolation=cv2.INTER_LINEAR) for c in raw]))


def _conv_and_features(encoder: keras.Model, layer: str) -> keras.Model:
    return keras.Model(encoder.inputs, [encoder.get_layer(layer).output, encoder.output])


def _logit(dense: keras.layers.Dense, inputs: tf.Tensor, class_index: int) -> tf.Tensor:
    """The pre-softmax score of a class: Grad-CAM's y^c (softmax gradients vanish when confident)."""
    return tf.linalg.matvec(inputs, dense.kernel[:, class_index]) + dense.bias[class_index]


def gradcam_slices(encoder: keras.Model, classifier: keras.layers.Dense, images: np.ndarray, class_index: int,
                   layer: str = LAST_CONV) -> np.ndarray:
    """Heatmaps in [0, 1] of shape (n, H, W) for slices (n, H, W) uint8 under a slice classifier
    (``classifier`` is the Dense softmax layer on the encoder features, e.g. the stage-1 one)."""
    model = _conv_and_features(encoder, layer)
    x = tf.convert_to_tensor(images[..., None], tf.float32)
    with tf.GradientTape() as tape:
        conv, feats = model(x, training=False)
        score = _logit(classifier, feats, class_index)
    return _cams(_raw_cams(conv, tape.gradient(score, conv)), images.shape[1:])


def gradcam_slice(model: keras.Model, layer: str, images: np.ndarray, class_index: int) -> np.ndarray:
    """Heatmaps in [0, 1] of shape (n, H, W) of a slice model (``training.archs``) on slices (n, H, W)
    uint8: the ``logits`` score of ``class_index`` against the activations of ``layer``. The
    TensorFlow reference of the edge's ``SliceGradCam``."""
    both = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer("logits").output])
    x = tf.convert_to_tensor(images[..., None], tf.float32)
    with tf.GradientTape() as tape:
        conv, logits = both(x, training=False)
        score = logits[:, class_index]
    return _cams(_raw_cams(conv, tape.gradient(score, conv)), images.shape[1:])


def gradcam_group(encoder: keras.Model, head: keras.Model, group: np.ndarray, class_index: int,
                  layer: str = LAST_CONV) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the group decision on every slice of a (50, H, W) uint8 group.

    Returns per-slice heatmaps (50, H, W) in [0, 1] and each slice's share of the evidence: how
    much the class score (logit) falls when that slice alone is replaced by a black slice
    (occlusion, clipped at 0 and normalised), which ranks the slices that drove the decision.
    """
    model = _conv_and_features(encoder, layer)
    before_softmax = keras.Model(head.input, head.layers[-1].input)
    x = tf.convert_to_tensor(group[..., None], tf.float32)
    with tf.GradientTape() as tape:
        conv, feats = model(x, training=False)
        score = _logit(head.layers[-1], before_softmax(feats[None], training=False), class_index)[0]
    heat = _cams(_raw_cams(conv, tape.gradient(score, conv)), group.shape[1:])
    black = encoder(tf.zeros((1,) + group.shape[1:] + (1,)), training=False)
    n = len(group)
    occluded = tf.where(tf.eye(n, dtype=bool)[..., None], black[None], feats[None])  # (n, n, F): slice i blacked out
    drop = tf.nn.relu(score - _logit(head.layers[-1], before_softmax(occluded, training=False), class_index)).numpy()
    share = drop / drop.sum() if drop.sum() > 0 else drop
    return heat, share


def _affine(angle: float, shift: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    h, w = size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    m[:, 2] += shift
    return m


def consistency(encoder: keras.Model, classifier: keras.layers.Dense, image: np.ndarray, class_index: int) -> dict:
    """Cosine similarity between the heatmap of ``image`` and the heatmaps of its rotated
    (clockwise, counter-clockwise) and translated ((30, -15), (-20, 15) px) versions, each mapped back
    by the inverse transform; returns the per-perturbation values and their mean."""
    size = image.shape
    transforms = [_affine(a, s, size) for _, a, s in PERTURBATIONS]
    moved = np.stack([image] + [cv2.warpAffine(image, m, size[::-1]) for m in transforms])
    maps = gradcam_slices(encoder, classifier, moved, class_index)
    base = maps[0].ravel()
    sims = {}
    for (name, _, _), m, cam in zip(PERTURBATIONS, transforms, maps[1:]):
        back = cv2.warpAffine(cam, cv2.invertAffineTransform(m), size[::-1]).ravel()
        denom = np.linalg.norm(base) * np.linalg.norm(back)
        sims[name] = float(base @ back / denom) if denom > 0 else 0.0
    return {"similarities": sims, "mean": float(np.mean(list(sims.values())))}

"""Pooled trunk features of model inputs, cached on disk, so that training a head on a frozen trunk
(``--freeze-epochs`` with ``--feature-cache``) computes each image's features once, and a rerun or
another fold of the head takes minutes.

The features are the output of layer ``pool`` of a ``training.archs`` slice model (what its dropout and
``logits`` read), computed in inference mode. One file ``<cache>/<fingerprint>.npz`` per trunk: the
fingerprint hashes the model's input shape and the weights of every layer up to ``pool``, so a
different trunk, weights file or input size never reads another's features. An entry's key is the
sha256 of the input image's bytes (uint8, as preprocessed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

POOL_LAYER = "pool"


def trunk_fingerprint(model) -> str:
    """A hex digest of ``model``'s input shape and the weights of its layers up to ``pool``."""
    import tf_keras as keras

    digest = hashlib.sha256(repr(tuple(model.input_shape)).encode())
    extractor = keras.Model(model.inputs, model.get_layer(POOL_LAYER).output)
    for w in extractor.get_weights():
        digest.update(np.ascontiguousarray(w, np.float32).tobytes())
    return digest.hexdigest()


def image_keys(images: np.ndarray) -> list[str]:
    """The cache key of each (H, W[, 1]) uint8 image: sha256 of its bytes."""
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images]


def pooled_features(model, images: np.ndarray, cache: Path | None, batch_size: int = 32) -> np.ndarray:
    """(N, F) float32 ``pool`` features of (N, H, W, 1) uint8 ``images`` through ``model``; those in
    ``cache`` (a folder; None: no cache) are read, the others computed and added to it."""
    import tf_keras as keras

    extractor = keras.Model(model.inputs, model.get_layer(POOL_LAYER).output)
    keys = image_keys(images)
    stored: dict[str, np.ndarray] = {}
    path = None
    if cache is not None:
        path = Path(cache) / f"{trunk_fingerprint(model)[:24]}.npz"
        if path.is_file():
            with np.load(path) as f:
                stored = dict(zip(f["keys"].tolist(), f["features"]))
    missing = [i for i, k in enumerate(keys) if k not in stored]
    for start in tqdm(range(0, len(missing), batch_size), desc="trunk features", disable=not missing):
        idx = missing[start:start + batch_size]
        out = extractor.predict(images[idx].astype(np.float32), batch_size=batch_size, verbose=0)
        stored.update(zip((keys[i] for i in idx), out.astype(np.float32)))
    if path is not None and missing:
        _save(path, stored)
    width = int(extractor.output_shape[-1])
    return np.stack([stored[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, width), np.float32)


def _save(path: Path, stored: dict[str, np.ndarray]) -> None:
    """Write the cache atomically (a crash never leaves half a file), owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    keys = list(stored)
    np.savez(tmp, keys=np.array(keys), features=np.stack([stored[k] for k in keys]))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)

"""Training of the Keras models (needs the ``[train]`` extra: TensorFlow). Depends on ``edge``."""

"""Training of the Keras models (needs the ``[train]`` extra: TensorFlow). Depends on ``edge``.

Models are built with tf_keras (Keras 2): its LSTM layers convert to fused, fully int8
UNIDIRECTIONAL_SEQUENCE_LSTM TFLite ops, which Keras 3's while-loop LSTMs do not.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

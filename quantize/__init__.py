"""Conversion of trained Keras models to int8 TFLite (needs the ``[train]`` extra). Depends on ``training``."""

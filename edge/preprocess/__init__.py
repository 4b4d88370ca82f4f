"""Preprocessing: lung window, resize, CLAHE, lung segmentation, slice selection, grouping."""

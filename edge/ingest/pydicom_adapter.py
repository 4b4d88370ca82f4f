"""The one place that interprets pydicom's messages, and its process settings for ctedge
(including which decoding plugin it tries first for each compressed transfer syntax).

pydicom signals a truncated element stream only by a warning, and a missing pixel-data decoder
by a RuntimeError, both recognisable by their text alone; the rest of ingestion asks these
functions instead of reading messages (``tests/test_pydicom_adapter.py`` pins them to the
installed pydicom's real behaviour).
"""

from __future__ import annotations

import logging
import warnings

import pydicom
from pydicom import uid
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders import gdcm as gdcm_plugin
from pydicom.pixels.decoders.base import Decoder

GDCM_FIRST = (uid.JPEGLossless, uid.JPEGLosslessSV1)
"""Syntaxes that python-gdcm decodes first where it is installed: 1.8x faster than pylibjpeg here
and bit-identical on the real studies (docs/benchmarks.md "Decoding in parallel"). pydicom falls back to
pylibjpeg, the next plugin, when gdcm raises (e.g. on a stream without its end-of-image marker).
For gdcm's other syntaxes pylibjpeg stays first and gdcm is the last resort: not measured, and
lossy JPEG decoders may round differently."""

_TRUNCATED = "End of file reached"
_NO_DECODER = "missing dependencies"     # pydicom 3: every plugin for the syntax lacks its package


def truncation_warned(caught: list[warnings.WarningMessage]) -> bool:
    """True when pydicom warned, while parsing, that the file ends inside a data element."""
    return any(_TRUNCATED in str(w.message) for w in caught)


def missing_decoder(exc: Exception) -> bool:
    """True when ``ds.pixel_array`` failed because nothing installed decodes the transfer syntax: no
    decoder exists for it (NotImplementedError) or its plugins' packages are missing. A stream that
    the plugins reject ("exceptions were raised by all available plugins") is damaged, not this."""
    return isinstance(exc, NotImplementedError) or (isinstance(exc, RuntimeError) and _NO_DECODER in str(exc))


def configure_pydicom() -> None:
    """ctedge's process-wide pydicom settings, applied by the ``ctedge`` command at start-up (not at
    import): real scanners write odd values (e.g. hyphenated UIDs), so values are not validated
    while reading; pydicom's own log lines, which carry full paths, and the traceback it logs for
    each decoding plugin that fails (also when the next plugin succeeds) are silenced (ctedge's
    messages name files by base name; a slice no plugin decodes is ctedge's CorruptFileError); and
    the decoding plugins are tried in the order GDCM_FIRST states."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    for syntax in gdcm_plugin.DECODER_DEPENDENCIES:       # pydicom's own order tries gdcm first for all
        _move_last(get_decoder(syntax), "pylibjpeg" if syntax in GDCM_FIRST else "gdcm")


def _move_last(decoder: Decoder, label: str) -> None:
    """Make ``label`` the last plugin ``decoder`` tries (at start-up: not thread-safe)."""
    decoder.remove_plugin(label)
    decoder.add_plugin(label, (f"pydicom.pixels.decoders.{label}", "_decode_frame"))


def first_plugin(syntax: str) -> str:
    """The decoding plugin pydicom tries first for ``syntax``: "native" for uncompressed pixel data,
    "none" when nothing installed decodes it."""
    try:
        plugins = get_decoder(syntax)._validate_plugins()      # the plugins in the order they are tried
    except (NotImplementedError, RuntimeError):
        return "none"
    return next(iter(plugins), "native")

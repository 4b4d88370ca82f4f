"""The one place that interprets pydicom's messages, and its process settings for ctedge.

pydicom signals a truncated element stream only by a warning, and a missing pixel-data decoder
by a RuntimeError, both recognisable by their text alone; the rest of ingestion asks these
functions instead of reading messages (``tests/test_pydicom_adapter.py`` pins them to the
installed pydicom's real behaviour).
"""

from __future__ import annotations

import logging
import warnings

import pydicom

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
    while reading, and pydicom's own log lines, which carry full paths, are silenced (ctedge's
    messages name files by base name)."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)

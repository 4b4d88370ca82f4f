"""The fixed bounds on what one input may cost before it is refused (docs/security-bounds.md).

Every door that reads bytes from outside (the DICOM receiver, the ingest of DICOM files that every
door ends in) checks against these constants; none is a profile setting, so a profile cannot turn a
bound off. The image-size bounds of the ingest (``MAX_SLICE_PIXELS``, ``MAX_RADIOGRAPH_PIXELS``) and
the server's body limits live next to the code that applies them.
"""

from __future__ import annotations

# --- DICOM receiver: before the caller is known (association phase) -----------------------------
MAX_CONTROL_PDU_BYTES = 128 * 2**10
"""The largest A-ASSOCIATE-RQ (and any PDU other than P-DATA) read: 128 presentation contexts with
about 30 transfer syntaxes each fit. A larger one is aborted after reading its 6-byte header."""
ASSOCIATION_PHASE_S = 10.0
"""A connection that has not completed association negotiation this long after it was accepted is closed."""
MAX_PENDING_PER_ADDRESS = 4
"""Connections from one address still negotiating; a further one closes the oldest of them."""
MAX_PENDING = 16
"""Connections still negotiating, all addresses together; a further one closes the oldest of them."""

# --- DICOM receiver: after the association is accepted -------------------------------------------
MAX_ASSOCIATIONS = 10
"""Established associations served at once (pynetdicom's own limit counts the negotiating ones too:
it is set to MAX_ASSOCIATIONS + MAX_PENDING)."""
RECEIVE_MAX_PDU_BYTES = 1 * 2**20
"""The maximum P-DATA PDU length the receiver announces and enforces (one 512 x 512 CT slice)."""
MAX_INSTANCE_BYTES = 64 * 2**20
"""The largest data set one C-STORE may bring (a 4300 x 4300 x 16-bit radiograph is 35 MB); the rest
of a larger one is discarded as it arrives and the instance refused with 0xA700."""

# --- every DICOM file, whatever door it came through ----------------------------------------------
MAX_DATA_ELEMENTS = 10_000
"""Top-level data elements of one DICOM file (a CT slice has a few hundred): reading stops there and
the file is refused."""
MAX_TOTAL_ELEMENTS = 50_000
"""Data elements and sequence items of one DICOM file at every depth, the file meta and command
groups included (counted on the bytes before pydicom parses them, ``edge/ingest/dicom_scan.py``)."""
MAX_SEQUENCE_DEPTH = 16
"""Sequences nested in sequences (an image's deepest, e.g. a code in a view code sequence, is 3-4)."""
MAX_INFLATED_BYTES = 128 * 2**20
"""Deflated Explicit VR Little Endian: the most bytes one file's data set may inflate to."""
MAX_INFLATE_RATIO = 100
"""Deflated Explicit VR Little Endian: the most one byte of deflated data set may inflate to (with
``MAX_INFLATED_BYTES``, whichever is reached first). CT pixel data deflates about 2-4x."""
MIN_INFLATE_ALLOWANCE = 8 * 2**20
"""Deflated Explicit VR Little Endian: what any file may inflate to whatever its ratio (one 2048 x
2048 16-bit slice: a blank slice deflates about 1000x)."""

# --- every multi-frame CT object (edge/ingest/enhanced.py) ----------------------------------------
MAX_FRAMES = 2000
"""Frames of one multi-frame CT object (Enhanced or Legacy Converted Enhanced CT), checked from its
header before its functional groups are interpreted; its frames x rows x columns may not exceed
MAX_FRAMES x 512 x 512 either (the study bound of the ingest), and each frame is at most one slice of
``MAX_SLICE_PIXELS``, all before any pixel is decoded."""

# --- DICOMweb STOW-RS (the server) ----------------------------------------------------------------
MAX_STOW_PARTS = 5_000
"""Parts of one STOW-RS request (a thin-slice CT study has 500-2000 instances): reading stops at the
next part and the request is answered 413 (the parts before it were processed)."""
MAX_PART_HEADER_BYTES = 16 * 2**10
"""The header block of one multipart part; a longer one ends the request with 400."""
STOW_CHUNK_BYTES = 64 * 2**10
"""The STOW-RS body is read in chunks of this size: at most one part (MAX_INSTANCE_BYTES) is held."""

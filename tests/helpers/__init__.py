"""What the tests import: paths (``paths``), DICOM edits and phantom trees (``dicom``), multi-frame CT
objects (``enhanced``), device profiles (``profiles``), synthetic radiographs (``radiographs``), bundles
whose answer is known by construction (``bundles``), DICOM network peers (``dicomnet``) and a real
``ctedge serve`` process (``server``). Fixtures live in tests/conftest.py."""

"""Quiet by default: no runtime notice on stderr, library chatter only with --debug."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from edge.cli import LIBRARY_LOGGERS, configure_logging
from edge.runtime import _without_notices
from tests.helpers.paths import REPO
from tests.helpers.profiles import DEMO_BUNDLE


def test_loading_a_model_prints_nothing_on_stderr():
    code = ("from edge.runtime import load_interpreter; import sys; "
            f"load_interpreter({str(DEMO_BUNDLE / 'encoder_int8.tflite')!r}, 1); "
            f"load_interpreter({str(DEMO_BUNDLE / 'head_float32.tflite')!r}, 1)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "XNNPACK" not in done.stderr and done.stderr == "", done.stderr


def test_other_runtime_lines_still_reach_stderr(capfd):
    with _without_notices():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"ERROR: Didn't find op for builtin opcode 'CUSTOM'\n")
    assert capfd.readouterr().err == "ERROR: Didn't find op for builtin opcode 'CUSTOM'\n"


@pytest.fixture
def library_levels():
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("verbose", [False, True])
def test_library_chatter_is_hidden_with_or_without_verbose(library_levels, verbose):
    configure_logging(verbose=verbose, debug=False)
    assert not logging.getLogger("highdicom.sr.sop").isEnabledFor(logging.INFO)
    assert not logging.getLogger("waitress.queue").isEnabledFor(logging.WARNING)


def test_debug_shows_the_libraries(library_levels):
    configure_logging(verbose=False, debug=True)
    assert logging.getLogger("highdicom").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("waitress.queue").isEnabledFor(logging.WARNING)

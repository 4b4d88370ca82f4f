"""docs/conformance.md stays true to the code: its SOP class, transfer syntax and code tables are the
receiver's, the sender's and the SR's own lists."""

from __future__ import annotations

import re

import pytest

from edge import CLASSES
from edge.dicomnet.outbox import SEND_TRANSFER_SYNTAXES
from edge.dicomnet.receiver import STORAGE_CLASSES, decodable_transfer_syntaxes
from edge.dicomnet.results import (AGREEMENT, DECISION_RULE, FINDINGS, INPUT_WARNING, MODEL_STATUS, PROCEDURES, SCHEME,
                                   VALIDATION, probability_code, result_objects)
from edge.engine import Engine
from tests.helpers.dicomnet import phantom_study, sr_items
from tests.helpers.paths import REPO

STATEMENT = (REPO / "docs" / "conformance.md").read_text()
UID = re.compile(r"`(1\.2\.840\.10008\.[0-9.]+)`")


def table(marker: str) -> list[list[str]]:
    """The rows (cells without their backticks) of the table after ``<!-- marker -->``."""
    rows = []
    for line in STATEMENT.split(f"<!-- {marker} -->\n", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def uids(marker: str) -> list[str]:
    return [uid for row in table(marker) for cell in row for uid in UID.findall(f"`{cell}`")]


@pytest.fixture(scope="module")
def sent_objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    phantom_study(root / "src", n_slices=24, size=64, seed=6)
    Engine.default().analyse(root / "src", root / "result")
    return result_objects(root / "result", root / "src")


def test_the_storage_scp_classes_are_the_receivers():
    assert sorted(uids("scp-sop-classes")) == sorted(uid for classes in STORAGE_CLASSES.values() for uid in classes)


def test_the_accepted_transfer_syntaxes_are_those_the_ingest_decodes_in_order_of_preference():
    assert uids("scp-transfer-syntaxes") == decodable_transfer_syntaxes()


def test_the_storage_scu_classes_and_syntaxes_are_the_senders(sent_objects):
    assert sorted(uids("scu-sop-classes")) == sorted({ds.SOPClassUID for ds in sent_objects})
    assert uids("scu-transfer-syntaxes") == list(SEND_TRANSFER_SYNTAXES)


def test_the_code_table_lists_every_standard_and_private_code_of_the_sr(sent_objects):
    listed = {(value, scheme, meaning) for _, value, scheme, meaning in table("sr-codes")}
    made = [*FINDINGS.values(), *PROCEDURES.values(), *(probability_code(c) for c in CLASSES), DECISION_RULE,
            MODEL_STATUS, VALIDATION, AGREEMENT, INPUT_WARNING]
    assert listed == {(c.value, c.scheme_designator, c.meaning) for c in made}
    used = {(code.get("CodeValue") or code.LongCodeValue, code.CodingSchemeDesignator, code.CodeMeaning)
            for item in sr_items(sent_objects[0]) for key in ("ConceptNameCodeSequence", "ConceptCodeSequence")
            for code in item.get(key, []) if code.CodingSchemeDesignator in ("SCT", SCHEME)}
    used -= {("260753009", "SCT", "Source")}   # the image library entry, shown in the tree
    assert used <= listed
    assert all(len(value) <= 16 for value, scheme, _ in listed if scheme == SCHEME)

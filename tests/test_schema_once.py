"""nbgrader's cell-metadata validation with schemas checked once (``autograder.execute.schema_once``): the same verdicts
and messages as ``jsonschema.validate``, the schema checked only the first time."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import nbformat
import nbgrader
import pytest
from nbgrader.nbgraderformat import MetadataValidator, ValidationError

from autograder.execute import schema_once
from autograder.course import SOLUTIONS_DIR

SCHEMA = json.loads((Path(nbgrader.__file__).parent / "nbgraderformat" / "v3.json").read_text())
GOOD = {"grade": True, "grade_id": "q1", "locked": False, "points": 2, "schema_version": 3, "solution": True}
BAD = [{**GOOD, "points": "two"}, {**GOOD, "grade": "yes"}, {**GOOD, "extra": 1},
       {key: value for key, value in GOOD.items() if key != "locked"}]


@pytest.mark.parametrize("metadata", [GOOD, *BAD])
def test_the_same_verdict_and_message_as_jsonschema(metadata):
    try:
        jsonschema.validate(copy.deepcopy(metadata), SCHEMA)
    except jsonschema.ValidationError as error:
        with pytest.raises(jsonschema.ValidationError) as ours:
            schema_once.validate(copy.deepcopy(metadata), SCHEMA)
        assert ours.value.message == error.message
    else:
        schema_once.validate(copy.deepcopy(metadata), SCHEMA)


def test_the_schema_is_checked_once(monkeypatch):
    checks = []
    cls = jsonschema.validators.validator_for(SCHEMA)
    original = cls.check_schema.__func__
    monkeypatch.setattr(cls, "check_schema", classmethod(lambda c, s: checks.append(1) or original(c, s)))
    monkeypatch.setattr(schema_once, "_VALIDATORS", {})
    for _ in range(5):
        schema_once.validate(GOOD, copy.deepcopy(SCHEMA))
    assert len(checks) == 1


def test_nbgrader_validates_the_course_notebooks_and_still_rejects_bad_metadata():
    schema_once.install()
    notebook = nbformat.read(SOLUTIONS_DIR / "03_ddpm.ipynb", as_version=4)
    MetadataValidator().validate_nb(notebook)
    cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade"))
    cell.metadata["nbgrader"]["points"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="'many' is not of type 'number'"):
        MetadataValidator().validate_nb(notebook)
    del cell.metadata["nbgrader"]["points"]
    with pytest.raises(ValidationError, match="does not have points"):
        MetadataValidator().validate_nb(notebook)

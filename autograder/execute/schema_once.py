"""nbgrader's cell-metadata validation with each JSON schema checked once per process, not once per cell.

nbgrader validates every cell's ``metadata.nbgrader`` with ``jsonschema.validate(metadata, schema)``, and that
function first checks the *schema* against its metaschema, at every call. For a graded notebook of about 50
cells, validated twice by ``Autograde``, that is half of the time it takes to score it into the gradebook
(measured with cProfile on the course's notebooks: 1.5 s of 3.6 s for six notebooks). :func:`install` gives
nbgrader's validator module a ``jsonschema`` whose ``validate`` keeps one validator per schema: the same
errors (``best_match`` of the same validator's errors, as ``jsonschema.validate`` raises), the schema checked
the first time it is seen.
"""

from __future__ import annotations

import json
import threading
import types

import jsonschema
from jsonschema.exceptions import best_match

_VALIDATORS: dict[str, object] = {}
_LOCK = threading.Lock()


def validate(instance, schema) -> None:
    """``jsonschema.validate(instance, schema)``, checking ``schema`` only the first time this process sees it."""
    key = json.dumps(schema, sort_keys=True)
    with _LOCK:
        validator = _VALIDATORS.get(key)
        if validator is None:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validator = _VALIDATORS[key] = cls(schema)
    error = best_match(validator.iter_errors(instance))
    if error is not None:
        raise error


def install() -> None:
    """Make nbgrader's metadata validator (``nbgrader.nbgraderformat.common``) use :func:`validate`."""
    from nbgrader.nbgraderformat import common

    if getattr(common.jsonschema, "validate", None) is not validate:
        shim = types.ModuleType("jsonschema", "jsonschema, with schemas checked once (autograder.execute.schema_once)")
        shim.__dict__.update({name: getattr(jsonschema, name) for name in dir(jsonschema) if not name.startswith("__")})
        shim.validate = validate
        common.jsonschema = shim

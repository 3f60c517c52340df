"""The instructor's side of the course: nbgrader configuration and the command line
(``python -m autograder release | grade | feedback | demo``)."""

import sys

# jsonschema (which nbformat and nbgrader import) checks the "iri" string formats with rfc3987_syntax when that is
# installed (JupyterLab's jupyter-events installs it), and rfc3987_syntax builds its grammar when imported: 1.5 s
# in every process of a grading run. No schema the autograder validates (nbformat's, nbgrader's cell metadata)
# uses those formats, so they go unchecked here.
sys.modules.setdefault("rfc3987_syntax", None)

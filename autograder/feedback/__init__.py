"""``python -m autograder feedback``: nbgrader's HTML feedback pages, hidden tests cut, student HTML cleaned, each page
written atomically; its template is ``templates/autograder_feedback``."""

"""Phase 2 of grading and the grades it gives: the one writer of the gradebook, the grade table and ``grades.csv``,
the run's record ``grading-run.json``, and the LMS export read from it."""

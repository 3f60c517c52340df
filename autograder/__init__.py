"""The instructor's side of the course: nbgrader configuration and the command line
(``python -m autograder release | grade | feedback | demo``)."""

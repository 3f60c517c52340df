"""``python -m autograder publish``: what students are given, the student notebooks and one ``course_lib`` wheel per
stage holding no answer of that stage or later."""

"""The progress line of a grading run (``autograder/progress.py``): done of all, problems, and the time left
estimated from the notebooks done so far, on a clock the test moves."""

from autograder.progress import Progress, duration


def test_the_time_left_follows_the_pace_so_far():
    now = [100.0]
    progress = Progress(12, clock=lambda: now[0])
    now[0] += 30  # three notebooks in 30 s: 10 s each, 9 left
    progress.record({"problem": None})
    progress.record({"problem": "missing"})
    assert progress.record({"problem": None}) == "3/12 done, 1 with problems, about 2 min left"
    now[0] += 60 * 60
    assert progress.record({"problem": None}).endswith("about 2 h 01 min left")  # 3630 s / 4 x 8, rounded up
    for _ in range(8):
        line = progress.record({"problem": None})
    assert line == "12/12 done, 1 with problems"  # nothing left to estimate
    quick = Progress(3, clock=lambda: now[0])
    now[0] += 10
    assert quick.record({"problem": None}) == "1/3 done, 0 with problems, under a minute left"


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (0, 59, 60, 61, 3599, 3600, 3660)] == [
        "under a minute", "under a minute", "1 min", "2 min", "1 h 00 min", "1 h 00 min", "1 h 01 min"]

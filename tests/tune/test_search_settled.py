"""How settled a search is: the last trial that gained 1 % on the best before it, and the
summary line the tune command prints from it (hand-made trial histories)."""

from __future__ import annotations

from resbench.tune.result import last_gain, search_note, settled


def test_the_last_gain_is_the_last_trial_that_beat_the_best_by_one_percent() -> None:
    # (number, latency) of feasible trials, out of order as storages may list them
    history = [(5, 2.40), (0, 3.65), (11, 3.34), (40, 2.398), (147, 2.30), (150, 2.2999)]
    assert last_gain(history) == 147  # 40 gains 0.08 %, 150 gains 0.004 %: neither counts
    assert last_gain([(3, 1.0)]) == 3  # the first feasible trial is a gain
    assert last_gain([]) is None
    # a small gain still lowers the bar the next trial is held to
    assert last_gain([(0, 1.0), (1, 0.995), (2, 0.984)]) == 2  # 0.984 < 0.995 × 0.99
    assert last_gain([(0, 1.0), (1, 0.995), (2, 0.986)]) == 0  # 0.986 > 0.995 × 0.99


def test_a_search_that_gained_in_its_later_half_is_not_settled() -> None:
    assert not settled(147, 200)  # 52 trials since the gain
    assert settled(99, 200)  # 100 since
    assert not settled(None, 200)
    line = search_note(147, 200)
    assert line == ("search: the best last improved by 1% or more at trial 147, 52 trials ago; "
                    "it may not have settled: the same command with more --n-trials resumes "
                    "the study")
    assert search_note(10, 200) == ("search: the best last improved by 1% or more at trial 10, "
                                    "189 trials ago")
    assert search_note(None, 0) is None

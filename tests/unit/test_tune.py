"""The schedule search of ``Searcher.tune``, through a fake measure."""

from collections import Counter

import pytest

from mrlsearch._tune import search_plans


def _fake_measure(calls):
    def measure(stages, ef, repeats=1):
        calls.append((stages, ef, repeats))
        first_dim, precision, shortlist = stages[0]
        recall = min(1.0, 0.5 + ef / 100 + (0.1 if precision == "float32" else 0.0))
        seconds = ef * 1e-6 * (2.0 if precision == "float32" else 1.0) + 1e-7 * len(stages)
        return recall, recall - 0.01, seconds
    return measure


@pytest.mark.parametrize("dims, index_dims", [((256,), (256,)), ((64, 128, 256), (64,))])
def test_every_schedule_is_measured_once_and_the_fastest_qualifying_wins(dims, index_dims):
    calls = []
    plan = search_plans(_fake_measure(calls), dims=dims, index_dims=index_dims,
                        precisions=("float32", "int8"), float_name="float32",
                        refine_binary=False, live=10_000, k=10, target_recall=0.9,
                        max_shortlist=4096, progress=False)
    searched = Counter((stages, ef) for stages, ef, repeats in calls[1:] if repeats == 1)
    assert max(searched.values()) == 1
    retimed = [(stages, ef) for stages, ef, repeats in calls if repeats > 1]
    assert len(retimed) == len(set(retimed))
    # the fastest qualifying schedule in the fake's terms: the int8 walk with the smallest ef
    # whose recall - 0.01 >= 0.9, i.e. ef >= 41
    assert plan.stages[0][1] == "int8" and plan.ef >= 41
    assert plan.ef == min(ef for (stages, ef) in searched
                          if stages[0][1] == "int8" and 0.5 + ef / 100 - 0.01 >= 0.9)


def test_a_screen_spares_the_full_run_of_schedules_that_cannot_qualify():
    plain_calls, screened_calls, screens = [], [], []
    options = dict(dims=(256,), index_dims=(256,), precisions=("float32", "int8"),
                   float_name="float32", refine_binary=False, live=10_000, k=10,
                   target_recall=0.9, max_shortlist=4096, progress=False)
    plain = search_plans(_fake_measure(plain_calls), **options)
    fake = _fake_measure(screens)

    def screen(stages, ef):
        recall, lower, seconds = fake(stages, ef)
        return recall, lower, recall + 0.03, seconds  # its upper bound

    screened = search_plans(_fake_measure(screened_calls), screen=screen, **options)
    assert (screened.stages, screened.ef) == (plain.stages, plain.ef)
    full_runs = {(stages, ef) for stages, ef, repeats in screened_calls[1:] if repeats == 1}
    # measured on all queries: exactly the schedules whose screen reached the target
    assert full_runs == {(stages, ef) for stages, ef, _ in screens
                         if 0.5 + ef / 100 + (0.1 if stages[0][1] == "float32" else 0) + 0.03
                         >= 0.9}
    assert len(full_runs) < len({(s, e) for s, e, r in plain_calls[1:] if r == 1})

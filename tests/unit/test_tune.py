"""The schedule search of ``Searcher.tune``, through a fake measure."""

from collections import Counter

import pytest

from mrlsearch import _tune
from mrlsearch._tune import search_plans


def _fake_measure(calls):
    def measure(stages, ef):
        calls.append((stages, ef))
        first_dim, precision, shortlist = stages[0]
        recall = min(1.0, 0.5 + ef / 100 + (0.1 if precision == "float32" else 0.0))
        seconds = ef * 1e-6 * (2.0 if precision == "float32" else 1.0) + 1e-7 * len(stages)
        return recall, recall - 0.01, seconds
    return measure


@pytest.mark.parametrize("dims, index_dims", [((256,), (256,)), ((64, 128, 256), (64,))])
def test_every_schedule_is_measured_once_and_the_fastest_qualifying_wins(dims, index_dims,
                                                                         monkeypatch):
    calls, retimes = [], []
    real_fastest = _tune.fastest

    def recorded_fastest(measure, qualified, **options):
        first = len(calls)
        plan = real_fastest(measure, qualified, **options)
        retimes.append((first, len(calls), len(qualified[:_tune._FINALISTS])))
        return plan

    monkeypatch.setattr(_tune, "fastest", recorded_fastest)
    plan = search_plans(_fake_measure(calls), dims=dims, index_dims=index_dims,
                        precisions=("float32", "int8"), float_name="float32",
                        refine_binary=False, live=10_000, k=10, target_recall=0.9,
                        max_shortlist=4096, progress=False)
    # the grid's winner, then the same schedule with a narrower beam: two re-timings, each of
    # the (at most six) fastest qualifying plans in rounds, every finalist once per round
    assert len(retimes) == 2
    for first, last, finalists in retimes:
        retimed = calls[first:last]
        assert finalists >= 2 and len(retimed) == finalists * _tune._RETIME_REPEATS
        assert retimed == retimed[:finalists] * _tune._RETIME_REPEATS
    grid = Counter(calls[1:retimes[0][0]])
    narrowed = calls[retimes[0][1]:retimes[1][0]]
    assert max(grid.values()) == 1 and not set(narrowed) & set(grid)
    # the grid's fastest qualifying schedule in the fake's terms is the int8 walk of shortlist
    # 28 with ef 56 (recall - 0.01 >= 0.9 needs ef >= 41; 40 is the grid's next beam down);
    # narrowed by 0.75 it keeps its shortlist at ef 42, which qualifies and is faster
    grid_best = min((ef for (stages, ef) in grid
                     if stages[0][1] == "int8" and 0.5 + ef / 100 - 0.01 >= 0.9))
    assert grid_best == 56 and plan.stages[0] == (plan.stages[0][0], "int8", 28)
    assert plan.ef == 42 and (plan.stages, 42) in set(narrowed)


def test_a_narrower_beam_that_misses_the_target_leaves_the_grids_winner():
    calls = []

    def measure(stages, ef):  # qualifies from ef 50 on: 0.875 x 56 = 49 does not
        calls.append((stages, ef))
        recall = 1.0 if ef >= 50 else 0.5
        return recall, recall - 0.01, ef * 1e-6

    plan = search_plans(measure, dims=(256,), index_dims=(256,), precisions=("float32",),
                        float_name="float32", refine_binary=False, live=10_000, k=10,
                        target_recall=0.9, max_shortlist=4096, progress=False)
    # the grid's winner (shortlist 28, ef 56) stays: its narrower beams (42, 49) were measured
    # last, missed, and were not re-timed
    assert (plan.stages[0][2], plan.ef) == (28, 56)
    assert sorted(ef for _, ef in calls[-2:]) == [42, 49]


class _RecordedBar:
    """Stands in for tqdm: keeps its units, and every measure's place among them."""

    bars: list = []

    def __init__(self, *, total, calls, **options):
        self.total, self.n, self.calls, self.at_measure = total, 0, calls, []
        _RecordedBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, units=1):
        self.n += units

    def refresh(self):
        pass

    def set_description(self, text):
        pass


@pytest.mark.parametrize("qualifies_from", [41, 50])  # the narrowed beam qualifies / misses
def test_the_progress_bar_counts_the_retiming_and_the_narrowing_and_ends_full(
        qualifies_from, monkeypatch):
    calls = []

    def measure(stages, ef):
        calls.append((stages, ef))
        if _RecordedBar.bars:  # the warm-up measure comes before the bar
            bar = _RecordedBar.bars[-1]
            bar.at_measure.append(bar.n)
        recall = 1.0 if ef >= qualifies_from else 0.5
        return recall, recall - 0.01, ef * 1e-6

    _RecordedBar.bars = []
    monkeypatch.setattr(_tune, "tqdm",
                        lambda **options: _RecordedBar(calls=calls, **options))
    search_plans(measure, dims=(256,), index_dims=(256,), precisions=("float32",),
                 float_name="float32", refine_binary=False, live=10_000, k=10,
                 target_recall=0.9, max_shortlist=4096, progress=True)
    (bar,) = _RecordedBar.bars
    grid = len(_tune.shortlist_grid(10, 10_000, 4096)) * len(_tune._EF_FACTORS)
    assert bar.n == bar.total > grid
    # the bar moves on during the re-timing: the last measures do not all sit at one count
    assert len(set(bar.at_measure[-4:])) > 1


def test_narrowing_a_beam_that_equals_its_shortlist_cuts_the_shortlists_to_fit():
    from mrlsearch._stages import validate_stages

    calls = []

    def measure(stages, ef):  # every schedule tried must be a valid one
        validate_stages(stages, 10, ef, dims=(64, 128, 256), index_dims=(64,),
                        dtype="float32", codes=())
        calls.append((stages, ef))
        recall = min(1.0, 0.5 + ef / 100)  # qualifies (lower bound recall - 0.01) at ef >= 41
        return recall, recall - 0.01, ef * 1e-6 + (ef - stages[0][2]) * 1e-5  # 2x beams cost

    plan = search_plans(measure, dims=(64, 128, 256), index_dims=(64,),
                        precisions=("float32",), float_name="float32", refine_binary=False,
                        live=10_000, k=10, target_recall=0.9, max_shortlist=4096,
                        progress=False)
    # the grid's winner is shortlist 57 at ef 57; 0.75x gives ef 43, its shortlist cut to 43
    # and the later ones to at most 43
    assert plan.ef == 43 and plan.stages[0] == (64, "float32", 43)
    assert all(later <= 43 for _, _, later in plan.stages[1:]) and plan.stages[-1][2] == 10
    assert any(stages[0][2] == 57 and ef == 57 for stages, ef in calls)


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
    full_runs = set(screened_calls[1:])
    # measured on all queries: exactly the schedules whose screen reached the target
    assert full_runs == {(stages, ef) for stages, ef in screens
                         if 0.5 + ef / 100 + (0.1 if stages[0][1] == "float32" else 0) + 0.03
                         >= 0.9}
    assert len(full_runs) < len(set(plain_calls[1:]))


def test_tune_screens_a_random_subset_not_the_first_queries(monkeypatch):
    # 100 off-distribution queries first, then 300 ordinary ones: screening the first 100
    # rejected schedules that qualify on all 400 (seen: the plan's beam doubled to 226)
    import numpy as np

    from mrlsearch import Searcher, _tune
    from mrlsearch.datasets import synthetic_mrl

    vectors, queries = synthetic_mrl(4000, 64, n_queries=300, seed=5)
    hard = np.random.default_rng(1).standard_normal((100, 64)).astype(np.float32)
    searcher = Searcher(64, dims=(16, 32, 64), index_dims=(16,), codes=("int8",))
    searcher.add(vectors, num_threads=1)  # one thread: the same graph every run
    seen = []
    real_fastest = _tune.fastest

    def record(measure, qualified, **options):
        seen.append({(plan.stages, plan.ef): plan.recall_lower for plan in qualified})
        return real_fastest(measure, qualified, **options)

    monkeypatch.setattr(_tune, "fastest", record)
    # no branch is cut for its timing (a float walk timed fast on a busy host cut the int8
    # branch before it qualified: 4 runs in 10 failed so), so only recall decides
    monkeypatch.setattr(_tune, "_PRUNE", float("inf"))
    searcher.tune(np.vstack([hard, queries]), k=10, target_recall=0.9, progress=False)
    # on all 400 queries the int8 walk qualifies at a shortlist of 113 (160 and 226 when the
    # hard queries were the screen)
    # (seen[0]: the grid's qualifying plans; a later call re-times the winner's narrowed beams)
    shortest = min(stages[0][2] for stages, _ in seen[0] if stages[0][1] == "int8")
    assert shortest <= 113

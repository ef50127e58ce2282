"""Tune on one query set, check recall on another, on data where the fixed schedule falls short."""

import numpy as np

from mrlsearch import Searcher
from mrlsearch.datasets import synthetic_mrl

TARGET = 0.95


def test_tuned_stages_reach_target_on_unseen_queries(capsys):
    vectors, queries = synthetic_mrl(20_000, 768, n_queries=800, seed=0)
    fit, unseen = queries[:400], queries[400:]
    searcher = Searcher(768, metric="cosine", index_dims=(16, 32, 64))
    searcher.add(vectors)
    plan = searcher.tune(fit, k=10, target_recall=TARGET, progress=False)
    assert plan.recall_lower >= TARGET
    truth = searcher.exact(unseen, k=10)
    tuned = searcher.funnel(unseen, k=10).recall(truth)
    paper = searcher.funnel(unseen, k=10, stages=searcher.default_stages(10)).recall(truth)
    with capsys.disabled():
        print(f"\n  tuned plan {plan}\n  unseen recall@10: tuned {tuned:.3f}, "
              f"paper schedule {searcher.default_stages(10)} {paper:.3f}")
    # the 95 % bound holds on the tuning queries; on 400 others the mean moves by sampling
    # (its standard error here is ~0.005: the plans tune can pick scored 0.955-0.971 unseen
    # over machines and loads, measured), so allow two standard errors
    assert tuned >= TARGET - 0.01, f"tuned recall {tuned:.3f} < {TARGET} - 0.01 on unseen queries"
    # the data is hard enough that the fixed schedule falls short: that is why tune exists
    assert paper < TARGET
    assert np.all(tuned >= paper)

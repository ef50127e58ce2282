"""One sweep of bad input over the public entry points (the table in docs/troubleshooting.md).

Each case must raise the documented error type with a message that names the argument, and
must leave the object unchanged. Finer cases live beside each module's own tests.
"""

import numpy as np
import pytest

from mrlsearch import Classifier, DimensionError, FormatError, Searcher

NAN_ROW = np.full((1, 16), np.nan)
STRINGS = np.array([["a"] * 16])


@pytest.fixture(scope="module")
def searcher():
    s = Searcher(16, (4, 8, 16), index_dims=(4,))
    s.add(np.random.default_rng(0).standard_normal((30, 16)))
    return s


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.default_rng(1)
    return Classifier.shared(rng.standard_normal((3, 16)), np.zeros(3), (4, 8, 16))


SEARCHER_CASES = [
    # (entry point, call, error, argument named in the message)
    ("add", lambda s: s.add(np.ones((2, 15))), DimensionError, "'vectors'"),
    ("add", lambda s: s.add(STRINGS), TypeError, "'vectors'"),
    ("add", lambda s: s.add(NAN_ROW), ValueError, "'vectors'"),
    ("add", lambda s: s.add(np.ones((0, 16))), ValueError, "'vectors'"),
    ("add", lambda s: s.add(np.ones((1, 16)), ids=["x"]), TypeError, "'ids'"),
    ("remove", lambda s: s.remove([12345]), ValueError, "'ids'"),
    ("remove", lambda s: s.remove([[1]]), DimensionError, "'ids'"),
    ("funnel", lambda s: s.funnel(np.ones(15)), DimensionError, "'queries'"),
    ("funnel", lambda s: s.funnel(STRINGS), TypeError, "'queries'"),
    ("funnel", lambda s: s.funnel(NAN_ROW), ValueError, "'queries'"),
    ("funnel", lambda s: s.funnel(np.ones((0, 16))), ValueError, "'queries'"),
    ("funnel", lambda s: s.funnel(np.ones(16), k=0), ValueError, "'k'"),
    ("funnel", lambda s: s.funnel(np.ones(16), stages=[(8, 10), (4, 10)]), DimensionError, "'stages'"),
    ("funnel", lambda s: s.funnel(np.ones(16), stages="4:10"), TypeError, "'stages'"),
    ("search_graph", lambda s: s.search_graph(np.ones(16), dim=16), DimensionError, "'dim'"),
    ("exact", lambda s: s.exact(np.ones(16), dim=5), DimensionError, "'dim'"),
    ("exact", lambda s: s.exact(np.ones(16), k=-1), ValueError, "'k'"),
    ("tune", lambda s: s.tune(np.ones((4, 16)), target_recall=2), ValueError, "'target_recall'"),
    ("tune", lambda s: s.tune(np.ones((1, 16))), ValueError, "'queries'"),
]


@pytest.mark.parametrize("name, call, error, argument", SEARCHER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SEARCHER_CASES)])
def test_searcher_bad_input(searcher, name, call, error, argument):
    before = (len(searcher), searcher.tombstones)
    with pytest.raises(error) as info:
        call(searcher)
    assert argument in str(info.value)
    assert (len(searcher), searcher.tombstones) == before


CLASSIFIER_CASES = [
    ("cascade", lambda c: c.cascade(np.ones((2, 15)), 0.5), DimensionError, "'x'"),
    ("cascade", lambda c: c.cascade(STRINGS, 0.5), TypeError, "'x'"),
    ("cascade", lambda c: c.cascade(NAN_ROW, 0.5), ValueError, "'x'"),
    ("cascade", lambda c: c.cascade(np.ones((1, 16)), [0.5] * 7), DimensionError, "'thresholds'"),
    ("cascade", lambda c: c.cascade(np.ones((1, 16)), float("nan")), ValueError, "'thresholds'"),
    ("predict", lambda c: c.predict(np.ones((1, 16)), dim=5), DimensionError, "'dim'"),
    ("calibrate", lambda c: c.calibrate(np.ones((3, 16)), [0, 1]), DimensionError, "'y_val'"),
    ("calibrate", lambda c: c.calibrate(np.ones((3, 16)), [0, 1, 7]), ValueError, "'y_val'"),
    ("calibrate", lambda c: c.calibrate(np.ones((3, 16)), [0, 1, 2], test_cost=-1),
     ValueError, "'test_cost'"),
    ("calibrate", lambda c: c.calibrate(np.ones((3, 16)), [0, 1, 2], drop_sigmas=float("nan")),
     ValueError, "'drop_sigmas'"),
    ("calibrate", lambda c: c.calibrate(np.ones((3, 16)), [0, 1, 2], objective="x"),
     ValueError, "'objective'"),
]


@pytest.mark.parametrize("name, call, error, argument", CLASSIFIER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CLASSIFIER_CASES)])
def test_classifier_bad_input(classifier, name, call, error, argument):
    with pytest.raises(error) as info:
        call(classifier)
    assert argument in str(info.value)
    assert classifier.thresholds is None


@pytest.mark.parametrize("loader", [Searcher.load, Classifier.load])
def test_foreign_files_are_format_errors(tmp_path, loader):
    (tmp_path / "thing").mkdir()
    (tmp_path / "thing" / "manifest.json").write_text('{"format": "something-else", "files": {}}')
    (tmp_path / "thing.npz").write_bytes(b"PK\x03\x04 not really a zip")
    target = tmp_path / ("thing" if loader is Searcher.load else "thing.npz")
    with pytest.raises(FormatError, match="thing"):
        loader(target)


def test_k_larger_than_the_index_pads_instead_of_failing(searcher):
    result = searcher.funnel(np.ones(16), k=50, stages=[(4, 60), (16, 50)])
    assert result.counts.tolist() == [30] and (result.ids[0, 30:] == -1).all()

import json

import numpy as np
import pytest

from mrlsearch import Classifier, Searcher
from mrlsearch.cli import main


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 32)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", vectors)
    np.save(tmp_path / "queries.npy", vectors[:20] + 0.01)
    return tmp_path


def test_index_query_tune_round_trip(files, capsys):
    index = files / "index"
    assert main(["index", str(files / "vectors.npy"), "--dims", "8,16,32", "--index-dims", "8",
                 "--out", str(index)]) == 0
    assert len(Searcher.load(index)) == 400
    assert main(["tune", str(index), str(files / "queries.npy"), "--target-recall", "0.9",
                 "--save"]) == 0
    assert Searcher.load(index).plan is not None
    capsys.readouterr()
    assert main(["query", str(index), str(files / "queries.npy"), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row[0] for row in out["ids"]] == list(range(20))
    assert main(["query", str(index), str(files / "queries.npy"), "-k", "2",
                 "--stages", "8:50,32:2"]) == 0
    assert capsys.readouterr().out.startswith("0\t0:")


def test_cascade_command(files, capsys):
    rng = np.random.default_rng(1)
    clf = Classifier.shared(rng.standard_normal((3, 32)), np.zeros(3), dims=(8, 16, 32))
    clf.save(files / "clf.npz")
    x = rng.standard_normal((50, 32)).astype(np.float32)
    np.save(files / "x.npy", x)
    np.save(files / "y.npy", clf.predict(x))
    assert main(["cascade", str(files / "clf.npz"), str(files / "x.npy"), "--calibrate",
                 str(files / "x.npy"), str(files / "y.npy"), "--save"]) == 0
    assert "expected dim" in capsys.readouterr().out
    assert Classifier.load(files / "clf.npz").thresholds is not None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["query", "missing_dir", "q.npy"], "No index directory at missing_dir"),
        (["index", "nope.npy", "--out", "x"], "No such file"),
        (["cascade", "missing.npz", "x.npy"], "No classifier file"),
    ],
)
def test_errors_are_one_line_and_exit_1(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("mrlsearch: error:") and message in err and err.count("\n") == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["index"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["query", "idx", "q.npy", "--stages", "16-200"])
    assert exc.value.code == 2

import argparse
import json
import os
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

import mrlsearch
from mrlsearch import Classifier, Searcher, cli
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


def _save_cascade_files(files):
    """clf.npz (a shared-head classifier over dims 8, 16, 32), x.npy and its labels y.npy."""
    rng = np.random.default_rng(1)
    clf = Classifier.shared(rng.standard_normal((3, 32)), np.zeros(3), dims=(8, 16, 32))
    clf.save(files / "clf.npz")
    x = rng.standard_normal((50, 32)).astype(np.float32)
    np.save(files / "x.npy", x)
    np.save(files / "y.npy", clf.predict(x))


def test_cascade_command(files, capsys):
    _save_cascade_files(files)
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


# ---------------------------------------------------------------------- issue 12: the CLI
@pytest.fixture
def index(files):
    path = files / "index"
    assert main(["index", str(files / "vectors.npy"), "--dims", "8,16,32", "--index-dims", "8",
                 "--out", str(path)]) == 0
    return path


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mrlsearch {mrlsearch.__version__}"
    parser = cli.build_parser()
    assert "``" not in parser.format_help()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action) if action.help else ""
            if not text or (action.default is not False and not action.required
                             and "default" not in text):
                missing.append(f"{name} {action.option_strings[0]}")
    assert missing == []
    query_help = subparsers.choices["query"].format_help()
    assert "results per query (default: 10)" in " ".join(query_help.split())
    assert "HNSW graph degree" in subparsers.choices["index"].format_help()


def test_info_add_remove(index, files, capsys):
    capsys.readouterr()
    assert main(["info", str(index), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 400 and info["dims"] == [8, 16, 32] and info["index_dims"] == [8]
    assert info["tombstones"] == 0 and info["plan"] is None and info["metric"] == "cosine"
    assert info["memory_usage"]["total"] > 0 and "codes" in info
    rng = np.random.default_rng(3)
    np.save(files / "more.npy", rng.standard_normal((5, 32)).astype(np.float32))
    np.save(files / "more_ids.npy", np.arange(1000, 1005))
    assert main(["add", str(index), str(files / "more.npy"), "--ids",
                 str(files / "more_ids.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == list(range(1000, 1005))
    loaded = Searcher.load(index)
    assert len(loaded) == 405 and 1003 in loaded
    (files / "ids.txt").write_text("1004\n")
    assert main(["remove", str(index), "1000", "1001", "--ids-file", str(files / "ids.txt")]) == 0
    loaded = Searcher.load(index)
    assert len(loaded) == 402 and 1000 not in loaded and 1004 not in loaded
    assert loaded.tombstones == 3
    assert main(["remove", str(index), "5", "--compact"]) == 0
    assert Searcher.load(index).tombstones == 0
    capsys.readouterr()
    assert main(["remove", str(index), "999999"]) == 1  # unknown id: nothing removed
    assert "unknown" in capsys.readouterr().err and len(Searcher.load(index)) == 401
    assert main(["info", str(index)]) == 0
    assert "count: 401" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["remove", str(index), "x"])
    assert exc.value.code == 2
    assert main(["remove", str(index)]) == 2


def test_query_ef_json_and_tune_json(index, files, capsys):
    capsys.readouterr()
    assert main(["query", str(index), str(files / "queries.npy"), "-k", "3", "--ef", "250",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row[0] for row in out["ids"]] == list(range(20)) and len(out["scores"][0]) == 3
    assert main(["query", str(index), str(files / "queries.npy"), "--stages", "8:100,32:5",
                 "-k", "5", "--ef", "50"]) == 1  # ef below the first shortlist
    assert "'ef'" in capsys.readouterr().err
    assert main(["tune", str(index), str(files / "queries.npy"), "--target-recall", "0.9",
                 "-k", "5", "--json", "--save"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["k"] == 5 and plan["recall_lower"] >= 0.9
    assert Searcher.load(index).plan.to_dict()["stages"] == plan["stages"]
    # a plan tuned for k=5 serves k=20
    assert main(["query", str(index), str(files / "queries.npy"), "-k", "20", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["ids"][0]) == 20


def test_index_auto_json(files, capsys):
    out_dir = files / "auto"
    assert main(["index", str(files / "vectors.npy"), "--out", str(out_dir), "--auto",
                 "--queries", str(files / "queries.npy"), "-k", "5", "--target-recall", "0.9",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 400 and info["plan"]["k"] == 5 and "build_report" in info
    assert Searcher.load(out_dir).plan is not None
    assert main(["index", str(files / "vectors.npy"), "--out", str(out_dir), "--auto",
                 "--index-dims", "8"]) == 2
    assert main(["index", str(files / "vectors.npy"), "--out", str(out_dir), "--auto",
                 "--link-dim", "8"]) == 2
    assert "--auto chooses the link dim itself" in capsys.readouterr().err


def test_index_link_dim(files, capsys):
    index = files / "linked"
    assert main(["index", str(files / "vectors.npy"), "--dims", "8,16,32", "--index-dims", "32",
                 "--link-dim", "16", "--out", str(index)]) == 0
    assert Searcher.load(index).link_dim == 16
    capsys.readouterr()
    assert main(["info", str(index), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["link_dim"] == 16
    assert main(["info", str(index)]) == 0
    assert "link_dim: 16" in capsys.readouterr().out
    assert main(["index", str(files / "vectors.npy"), "--dims", "8,16,32", "--link-dim", "12",
                 "--out", str(files / "bad")]) != 0
    assert "'link_dim' must be one of dims" in capsys.readouterr().err


class _FakeTextEncoder:
    """Stands in for an exported text model: a fixed vector per text (blank ones included)."""

    made: ClassVar[list] = []

    def __init__(self, model_dir, *args, **kwargs):
        self.model_dir = str(model_dir)
        _FakeTextEncoder.made.append(self.model_dir)

    is_text = True
    dims = (8, 16)
    metric = "cosine"

    def encode(self, texts, *args, **kwargs):
        out = np.empty((len(texts), 16), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = sum(text.encode("utf-8")) + 7 * len(text)
            out[row] = np.random.default_rng(seed).standard_normal(16)
        return out


def test_text_index_remembers_model_and_keeps_blank_lines(tmp_path, monkeypatch, capsys):
    import mrlsearch.encoder

    monkeypatch.setattr(mrlsearch.encoder, "Encoder", _FakeTextEncoder)
    model = tmp_path / "model"
    model.mkdir()
    texts = ["alpha beta", "", "gamma", "   ", "delta epsilon zeta"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    index = tmp_path / "text_index"
    assert main(["index", str(tmp_path / "texts.txt"), "--model", str(model),
                 "--out", str(index)]) == 0
    assert sorted(Searcher.load(index).ids().tolist()) == list(range(len(texts)))
    sidecar = json.loads(cli.sidecar_path(index).read_text())
    assert sidecar["model"] == str(model.resolve())
    capsys.readouterr()
    monkeypatch.chdir(tmp_path.parent)  # a relative --out must not matter either
    assert main(["query", str(index), "--text", "gamma", "--text", "delta epsilon zeta",
                 "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == [[2], [4]]
    assert _FakeTextEncoder.made[-1] == str(model.resolve())
    # rebuilding from vectors forgets the model: --text asks for --model again
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((20, 16)).astype("f4"))
    assert main(["index", str(tmp_path / "v.npy"), "--out", str(index), "--force"]) == 0
    assert not cli.sidecar_path(index).exists()
    capsys.readouterr()
    assert main(["query", str(index), "--text", "gamma"]) == 1
    assert "--model" in capsys.readouterr().err


def test_bad_values_exit_codes(files, index, capsys):
    for argv in (["query", str(index), str(files / "queries.npy"), "-k", "0"],
                 ["tune", str(index), str(files / "queries.npy"), "-k", "0"],
                 ["index", str(files / "vectors.npy"), "--out", str(files / "x"), "--M", "1"],
                 ["tune", str(index), str(files / "queries.npy"), "--target-recall", "1.5"],
                 ["query", str(index), str(files / "queries.npy"), "--ef", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    capsys.readouterr()
    np.save(files / "empty.npy", np.zeros((0, 32), dtype=np.float32))
    # an empty file is bad input, not bad usage: exit 1 (docs/troubleshooting.md, "empty batch")
    for argv in (["index", str(files / "empty.npy"), "--out", str(files / "x")],
                 ["query", str(index), str(files / "empty.npy")],
                 ["add", str(index), str(files / "empty.npy")]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert "is empty" in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["query", str(index), str(files / "queries.npy"), "--text", "x"]) == 2


def test_cascade_labels_must_be_integers_like_calibrate(files, capsys):
    # the CLI refuses what Classifier.calibrate refuses: float labels, even integral ones
    rng = np.random.default_rng(1)
    clf = Classifier.shared(rng.standard_normal((3, 32)), np.zeros(3), dims=(8, 16, 32))
    clf.save(files / "clf.npz")
    x = rng.standard_normal((50, 32)).astype(np.float32)
    np.save(files / "x.npy", x)
    for name, y in (("y_float.npy", clf.predict(x).astype(np.float64)),
                    ("y_half.npy", np.where(np.arange(50) == 3, 0.5, clf.predict(x))),
                    ("y_str.npy", clf.predict(x).astype(str))):
        np.save(files / name, y)
        assert main(["cascade", str(files / "clf.npz"), str(files / "x.npy"), "--calibrate",
                     str(files / "x.npy"), str(files / name), "--json"]) == 1
        err = capsys.readouterr().err
        assert "integer class labels" in err and f"got dtype {y.dtype}" in err
        assert "[0," not in err and err.count("\n") == 1
        with pytest.raises(TypeError, match=rf"got dtype {y.dtype}"):
            clf.calibrate(x, y)
    np.save(files / "y_int.npy", clf.predict(x).astype(np.int32))
    assert main(["cascade", str(files / "clf.npz"), str(files / "x.npy"), "--calibrate",
                 str(files / "x.npy"), str(files / "y_int.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["labels"]) == 50 and "calibration" in out


def test_closed_pipe_exits_quietly(index, files):
    np.save(files / "many.npy", np.repeat(np.load(files / "queries.npy"), 500, axis=0))
    code = ("import sys; from mrlsearch.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "query", str(index),
                             str(files / "many.npy"), "-k", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == cli.EXIT_BROKEN_PIPE
    assert first.startswith(b"0\t0:")
    assert "Broken pipe" not in err and "Traceback" not in err and err == ""


def test_text_index_stores_lines_as_payloads_and_query_prints_them(tmp_path, monkeypatch,
                                                                   capsys):
    import mrlsearch.encoder

    monkeypatch.setattr(mrlsearch.encoder, "Encoder", _FakeTextEncoder)
    model = tmp_path / "model"
    model.mkdir()
    texts = ["alpha beta", "", "gamma\twith tab", "délta ✓"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    index = tmp_path / "text_index"
    assert main(["index", "--text", str(tmp_path / "texts.txt"), "--model", str(model),
                 "--out", str(index), "--dims", "8,16", "--index-dims", "8"]) == 0
    loaded = Searcher.load(index)
    assert loaded.get(list(range(4)), payload=True) == texts
    capsys.readouterr()
    assert main(["info", str(index), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["payloads"] is True
    assert main(["query", str(index), "--text", "gamma\twith tab", "--text", "délta ✓",
                 "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row[0] for row in out["ids"]] == [2, 3]
    assert [row[0] for row in out["payloads"]] == ["gamma\twith tab", "délta ✓"]
    assert len(out["payloads"][0]) == len(out["ids"][0]) == len(out["scores"][0]) == 2
    assert main(["query", str(index), "--text", "délta ✓", "-k", "1", "--verify", "none"]) == 0
    assert capsys.readouterr().out.startswith("0\t3:1.0000\tdélta ✓\n")
    assert main(["query", str(index), "--text", "gamma\twith tab", "-k", "1"]) == 0
    assert capsys.readouterr().out == "0\t2:1.0000\tgamma\\twith tab\n"  # tab escaped
    assert main(["query", str(index), "--text", "gamma\twith tab", "-k", "1",
                 "--no-payloads"]) == 0
    assert capsys.readouterr().out == "0\t2:1.0000\n"
    # the older form (texts as the positional argument) stores them too
    assert main(["index", str(tmp_path / "texts.txt"), "--model", str(model),
                 "--out", str(tmp_path / "older")]) == 0
    assert Searcher.load(tmp_path / "older").get([3], payload=True) == ["délta ✓"]


def test_vectors_with_text_payloads_auto_and_mismatch(files, tmp_path, capsys):
    lines = [f"doc {i}" for i in range(400)]
    (tmp_path / "docs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    index = tmp_path / "with_texts"
    assert main(["index", str(files / "vectors.npy"), "--text", str(tmp_path / "docs.txt"),
                 "--dims", "8,16,32", "--index-dims", "8", "--out", str(index)]) == 0
    assert Searcher.load(index, mmap=True).get([0, 399], payload=True) == ["doc 0", "doc 399"]
    capsys.readouterr()
    assert main(["query", str(index), str(files / "queries.npy"), "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[5] == "5\t5:" + \
        _top_score(Searcher.load(index), files, 5) + "\tdoc 5"
    auto = tmp_path / "auto_texts"
    assert main(["index", str(files / "vectors.npy"), "--text", str(tmp_path / "docs.txt"),
                 "--auto", "--queries", str(files / "queries.npy"), "-k", "5",
                 "--target-recall", "0.9", "--out", str(auto)]) == 0
    built = Searcher.load(auto)
    assert built.plan is not None and built.get([7, 3], payload=True) == ["doc 7", "doc 3"]
    (tmp_path / "short.txt").write_text("one\ntwo\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["index", str(files / "vectors.npy"), "--text", str(tmp_path / "short.txt"),
                 "--out", str(tmp_path / "bad")]) == 1
    assert "has 2 lines but VECTORS has 400 rows" in capsys.readouterr().err
    assert main(["index", "--text", str(tmp_path / "short.txt"), "--out",
                 str(tmp_path / "bad")]) == 2  # texts without a model or vectors
    assert main(["index", "--out", str(tmp_path / "bad")]) == 2


def _top_score(searcher, files, row):
    queries = np.load(files / "queries.npy")
    return f"{float(searcher.search(queries[row], k=1).scores[0, 0]):.4f}"


def test_query_json_encodes_bytes_payloads(tmp_path, capsys):
    import base64

    vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    s = Searcher(16, dims=(8, 16), index_dims=(8,))
    s.add(vectors, payloads=[b"\x00\x01" if i == 3 else None for i in range(50)])
    s.save(tmp_path / "index")
    np.save(tmp_path / "q.npy", vectors[[3, 4, 3]])  # queries 0 and 2 share their hits
    assert main(["query", str(tmp_path / "index"), str(tmp_path / "q.npy"), "-k", "2",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    raw = {"base64": base64.b64encode(b"\x00\x01").decode()}
    assert out["ids"][0] == out["ids"][2] and out["ids"][0][0] == 3
    assert out["payloads"][0] == out["payloads"][2] == [raw, None]
    assert out["payloads"][1] == [None, None] or raw in out["payloads"][1]
    np.save(tmp_path / "q.npy", vectors[[3, 4]])
    assert main(["query", str(tmp_path / "index"), str(tmp_path / "q.npy"), "-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("\tb'\\x00\\x01'") and lines[1].endswith("\t-")


# ---------------------------------------------------------------------- options and files
@pytest.mark.parametrize("extra, named", [
    (["-k", "5"], "-k is for --auto"),
    (["--target-recall", "0.9"], "--target-recall is for --auto"),
    (["-k", "5", "--target-recall", "0.9"], "-k and --target-recall are for --auto"),
    (["--queries", "QUERIES"], "--queries is for --auto"),
])
def test_index_options_that_need_auto_are_usage_errors(files, capsys, monkeypatch, extra,
                                                       named):
    def no_build(*args, **kwargs):
        raise AssertionError("built an index despite a usage error")

    monkeypatch.setattr(Searcher, "add", no_build)
    extra = [str(files / "queries.npy") if arg == "QUERIES" else arg for arg in extra]
    assert main(["index", str(files / "vectors.npy"), "--out", str(files / "idx"),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrlsearch index: error: ") and named in err
    assert not (files / "idx").exists()


@pytest.mark.parametrize("source, extra, named", [
    ("INDEX", ["--metric", "l2"], "--metric does nothing for an index directory"),
    ("INDEX", ["--index-dims", "8", "--metric", "ip"],
     "--metric and --index-dims do nothing for an index directory"),
    ("NPY", ["--mmap"], "--mmap does nothing for a .npy source"),
    ("NPY", ["--queries", "QUERIES", "--n-queries", "50"], "--n-queries is for queries sampled"),
])
def test_bench_options_that_do_nothing_are_usage_errors(index, files, capsys, monkeypatch,
                                                         source, extra, named):
    import mrlsearch.benchmark

    def no_run(*args, **kwargs):
        raise AssertionError("ran the benchmark despite a usage error")

    monkeypatch.setattr(mrlsearch.benchmark, "compare", no_run)
    source = str(index) if source == "INDEX" else str(files / "vectors.npy")
    extra = [str(files / "queries.npy") if arg == "QUERIES" else arg for arg in extra]
    assert main(["bench", source, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrlsearch bench: error: ") and named in err


@pytest.mark.parametrize("extra, named", [
    (["--save"], "--save is for --calibrate"),
    (["--max-drop", "0.01"], "--max-drop is for --calibrate"),
    (["--objective", "compute"], "--objective is for --calibrate"),
    (["--max-drop", "0.01", "--save"], "--max-drop and --save are for --calibrate"),
])
def test_cascade_options_that_need_calibrate_are_usage_errors(files, capsys, extra, named):
    rng = np.random.default_rng(1)
    clf = Classifier.shared(rng.standard_normal((3, 32)), np.zeros(3), dims=(8, 16, 32))
    clf.save(files / "clf.npz")
    before = (files / "clf.npz").read_bytes()
    np.save(files / "x.npy", rng.standard_normal((5, 32)).astype(np.float32))
    assert main(["cascade", str(files / "clf.npz"), str(files / "x.npy"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrlsearch cascade: error: ") and named in err
    assert (files / "clf.npz").read_bytes() == before


def test_cascade_calibrate_defaults_are_kept(files, capsys, monkeypatch):
    seen = {}
    real = Classifier.calibrate

    def spy(self, x_val, y_val, max_drop, objective):
        seen.update(max_drop=max_drop, objective=objective)
        return real(self, x_val, y_val, max_drop=max_drop, objective=objective)

    monkeypatch.setattr(Classifier, "calibrate", spy)
    _save_cascade_files(files)
    assert main(["cascade", str(files / "clf.npz"), str(files / "x.npy"), "--calibrate",
                 str(files / "x.npy"), str(files / "y.npy")]) == 0
    assert seen == {"max_drop": 0.005, "objective": "expected_dim"}


def test_files_that_are_not_npy_say_so(files, capsys):
    (files / "texts.txt").write_text("hello\nworld\n", encoding="utf-8")
    np.savez(files / "arrays.npz", x=np.ones((3, 4)))
    for path, kind in ((files / "texts.txt", "is not a .npy file"),
                       (files / "arrays.npz", "is a .npz archive")):
        assert main(["index", str(path), "--out", str(files / "idx")]) == 1
        err = capsys.readouterr().err
        assert f"'VECTORS' ({path}) {kind}" in err and "pickled" not in err
        assert err.count("\n") == 1
    assert main(["index", str(files / "vectors.npy"), "--auto", "--queries",
                 str(files / "texts.txt"), "--out", str(files / "idx")]) == 1
    assert f"'--queries' ({files / 'texts.txt'}) is not a .npy file" in capsys.readouterr().err


def test_object_arrays_and_text_that_is_not_utf8_name_their_file(files, capsys):
    np.save(files / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert main(["index", str(files / "objects.npy"), "--out", str(files / "idx")]) == 1
    err = capsys.readouterr().err
    assert f"'VECTORS' ({files / 'objects.npy'}) cannot be read as a numeric .npy array" in err
    assert err.count("\n") == 1
    (files / "texts.txt").write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    assert main(["index", str(files / "vectors.npy"), "--text", str(files / "texts.txt"),
                 "--out", str(files / "idx")]) == 1
    err = capsys.readouterr().err
    assert f"{files / 'texts.txt'} is not UTF-8 text (byte 19, line 3)" in err
    assert err.count("\n") == 1


def test_index_out_errors_name_the_out_path(files, capsys, monkeypatch):
    (files / "file").write_bytes(b"x")
    for out, message in ((files / "file" / "sub" / "idx", f"{files / 'file'} is not a directory"),
                         (files / "file", "exists and is not a directory")):
        assert main(["index", str(files / "vectors.npy"), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mrlsearch: error: '--out' ({out})") and message in err
    # missing parent directories are made, as Searcher.save makes them
    assert main(["index", str(files / "vectors.npy"), "--dims", "8,16,32", "--index-dims", "8",
                 "--out", str(files / "new" / "sub" / "idx")]) == 0
    assert len(Searcher.load(files / "new" / "sub" / "idx")) == 400

    def refused(self, path):  # a filesystem that refuses the lock file beside the index
        raise FileNotFoundError(2, "No such file or directory", str(files / ".idx.lock"))

    monkeypatch.setattr(Searcher, "save", refused)
    assert main(["index", str(files / "vectors.npy"), "--out", str(files / "idx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mrlsearch: error: '--out' ({files / 'idx'}) cannot be written: "
                          "No such file or directory")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_index_out_in_proc_names_the_out_path(files, capsys):
    assert main(["index", str(files / "vectors.npy"), "--dims", "8,16,32", "--index-dims", "8",
                 "--out", "/proc/mrlsearch_test_index"]) == 1
    assert capsys.readouterr().err.startswith(
        "mrlsearch: error: '--out' (/proc/mrlsearch_test_index) cannot be written")


def test_index_out_onto_a_folder_of_files_fails_before_the_work(files, capsys, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("built an index that could not be saved")

    monkeypatch.setattr(Searcher, "add", no_build)
    folder = files / "mine"
    folder.mkdir()
    (folder / "notes.md").write_text("keep me")
    assert main(["index", str(files / "vectors.npy"), "--out", str(folder)]) == 1
    assert "does not hold a saved index" in capsys.readouterr().err
    assert (folder / "notes.md").read_text() == "keep me"


@pytest.mark.parametrize("content", [b"{broken", b"[" * 100_000 + b"]" * 100_000])
def test_a_corrupt_cli_sidecar_is_an_error_message(index, capsys, content):
    cli.sidecar_path(index).write_bytes(content)
    capsys.readouterr()
    assert main(["info", str(index)]) == 1
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["query", "info"])
def test_verify_lazy_reports_a_corrupt_file_before_printing(index, files, capsys, command):
    # the process ends with the command: a background check left running never reported
    vectors = index / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-10] ^= 0xFF
    vectors.write_bytes(bytes(data))
    argv = [command, str(index)] + ([str(files / "queries.npy")] if command == "query" else [])
    capsys.readouterr()
    assert main(argv + ["--verify", "lazy"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "vectors.npy" in err and "Traceback" not in err
    assert main(argv + ["--verify", "none"]) == 0  # asked not to check: it does not


def test_index_replaces_a_saved_index_only_with_force(files, index, capsys):
    # a typo in --out replaced a 400-row index with whatever was indexed, at exit 0
    np.save(files / "few.npy", np.ones((5, 32), dtype=np.float32))
    capsys.readouterr()
    assert main(["index", str(files / "few.npy"), "--out", str(index)]) == 1
    err = capsys.readouterr().err
    assert f"'--out' ({index}) already holds an index: pass --force" in err
    assert len(Searcher.load(index)) == 400
    assert main(["index", str(files / "few.npy"), "--out", str(index), "--force"]) == 0
    assert len(Searcher.load(index)) == 5
    # another kind of saved directory is refused as such, with or without --force
    other = files / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "mrlsearch.model", "files": {}}')
    for extra in ([], ["--force"]):
        assert main(["index", str(files / "few.npy"), "--out", str(other)] + extra) == 1
        err = capsys.readouterr().err
        assert "mrlsearch.model" in err and "--force" not in err

"""``python -m exporters``: arguments and run directories are checked before any training."""

import pytest

pytest.importorskip("torch")

from exporters.__main__ import main  # noqa: E402

TRAIN = ["train", "--data", "digits", "--dims", "8,16", "--epochs", "1"]


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "argument --epochs: expected an int >= 1 (got 0)"),
    (["--batch-size", "0"], "argument --batch-size: expected an int >= 1 (got 0)"),
    (["--embed-dim", "0"], "argument --embed-dim: expected an int >= 1 (got 0)"),
    (["--hidden", "0"], "argument --hidden: expected ints >= 1"),
    (["--adapter-hidden", "-1"], "argument --adapter-hidden: expected an int >= 0"),
    (["--dims", ""], "argument --dims: expected at least one int"),
])
def test_zero_and_empty_values_are_usage_errors(tmp_path, capsys, extra, message):
    # before: 0 epochs trained 20, batch size 0 used 64, --dims '' raised an IndexError
    with pytest.raises(SystemExit) as exc:
        main(TRAIN + ["--out", str(tmp_path / "run")] + extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_earlier_run_is_continued_only_with_resume(tmp_path, capsys):
    # before: a second train into the same --out resumed its checkpoints silently, ignoring
    # the new --lr and --seed, and other dims failed with torch's multi-line state_dict error
    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run)]) == 0
    weights = (run / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(TRAIN + ["--out", str(run), "--lr", "0.05"]) == 1
    assert "holds an earlier run: pass --resume" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == weights
    other = ["train", "--data", "digits", "--dims", "8,32", "--epochs", "2"]
    assert main(other + ["--out", str(run), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "holds checkpoints of another model (size mismatch" in err and err.count("\n") == 1
    assert main(TRAIN + ["--out", str(tmp_path / "new"), "--resume"]) == 1
    assert "--resume: " in capsys.readouterr().err


def test_an_out_that_is_a_file_and_a_diverged_run_leave_nothing(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep")
    assert main(TRAIN + ["--out", str(tmp_path / "afile")]) == 1  # before training, not after
    assert "exists and is not a directory" in capsys.readouterr().err
    # a real divergence: its NaN epoch was checkpointed, the run said "nothing was saved",
    # and a retry into the same --out was refused as an earlier run
    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run), "--lr", "1e30", "--epochs", "2"]) == 1
    assert "training diverged" in capsys.readouterr().err
    assert not run.exists()
    assert main(TRAIN + ["--out", str(run)]) == 0

"""``gaea plot RUN_DIR`` on a training run: loss, accuracy and schedule figures from its
``metrics.jsonl``."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from gaea_nas import plots
from gaea_nas.cli import main
from gaea_nas.plots import RunDataError, plot_run


def _records(epochs=4, ema=False):
    out = []
    for e in range(1, epochs + 1):
        r = {"epoch": e, "lr": 0.025 * (1 - e / epochs), "drop_path_prob": 0.2 * e / epochs,
             "train_loss": 2.0 / e, "train_acc": 0.2 * e, "images_per_s": 100.0,
             "test_loss": 2.1 / e, "test_top1": 0.18 * e}
        if ema:
            r.update(ema_test_loss=2.0 / e, ema_test_top1=0.19 * e)
        out.append(r)
    return out


def _write(run, records):
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_run_figures(tmp_path):
    _write(tmp_path / "run", _records())
    paths = plot_run(tmp_path / "run")
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "schedule.png"]
    assert all(p.parent == tmp_path / "run" / "plots" for p in paths)
    for p in paths:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    with Image.open(paths[2]) as wide, Image.open(paths[0]) as narrow:
        assert wide.size[0] > narrow.size[0]  # two panels: learning rate and drop path


def test_training_curves_hold_the_recorded_values(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records(3, ema=True)
    lines = {}
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (lines.update(
        {ln.get_label(): list(ln.get_ydata()) for ax in fig.axes for ln in ax.lines}), close(fig)))
    plots._plot_training(plt, records, [tmp_path / n for n in ("a.png", "b.png", "c.png")])
    assert not plt.get_fignums()  # every figure closed
    assert lines["test top-1"] == pytest.approx([18.0, 36.0, 54.0])
    assert lines["learning rate"] == pytest.approx([r["lr"] for r in records])
    assert lines["drop path"] == pytest.approx([r["drop_path_prob"] for r in records])
    assert lines["train"] == pytest.approx([r["train_loss"] for r in records])
    assert lines["EMA test top-1"] == pytest.approx([19.0, 38.0, 57.0])
    assert "test top-5" not in lines  # not recorded: no curve


def test_training_run_errors(tmp_path, capsys):
    records = _records(2)
    for r in records:
        del r["lr"]
    _write(tmp_path / "run", records)
    with pytest.raises(RunDataError, match=r"records lack 'lr'; not a gaea training run"):
        plot_run(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 1
    assert "metrics.jsonl: records lack 'lr'" in capsys.readouterr().err

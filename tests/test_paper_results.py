"""The paper reproduction (paper_results/): its helpers, the MNIST training script, and the whole
`python -m paper_results all --quick` run, whose every table, CSV and figure is checked."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _have_data() -> bool:
    try:
        from fisher_ref.datasets import default_data_dir

        d = default_data_dir()
    except FileNotFoundError:
        return False
    return (d / "mnist").is_dir() and (d / "cifar10-jpeg.tar.gz").is_file()


needs_data = pytest.mark.skipif(not _have_data(), reason="needs ../shared/data (MNIST IDX and CIFAR-10 JPEG)")


# ------------------------------------------------------------------------------------------ helpers
def test_cifar_model_and_datasets_choose_the_runs_model_folder_and_command(tmp_path, capsys):
    from paper_results import _common as C

    p = C.parser("test")
    run = C.Run("table2", p.parse_args(["--cifar-model", "vgg-cifar-w1", "--datasets", "cifar, cifar",
                                         "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")]))
    assert run.datasets == ("cifar",) and run.model_key("cifar") == "vgg-cifar-w1" and run.model_key("mnist") == "lenet"
    assert run.command() == "python -m paper_results table2 --cifar-model vgg-cifar-w1 --datasets cifar"
    assert run._default_out() == C.RESULTS / "vgg-cifar-w1"
    default = C.Run("table2", p.parse_args(["--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")]))
    assert default.datasets == ("mnist", "cifar") and default.command() == "python -m paper_results table2"
    assert default._default_out() == C.RESULTS
    own = C.parser("test")  # a script with its own default (adaptive: MNIST only) names a choice beyond it
    own.set_defaults(datasets=("mnist",))
    both = C.Run("adaptive", own.parse_args(["--datasets", "mnist,cifar", "--cache-dir", str(tmp_path), "--out",
                                             str(tmp_path / "o")]))
    assert both.command() == "python -m paper_results adaptive --datasets mnist,cifar"
    assert C.Run("adaptive", own.parse_args(["--out", str(tmp_path / "o")])).command() == "python -m paper_results adaptive"
    for bad in (["--datasets", "svhn"], ["--datasets", ""], ["--cifar-model", "resnet"]):
        with pytest.raises(SystemExit) as exc:
            p.parse_args(bad)
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err


def test_random_subset_is_seeded_sorted_and_distinct():
    from paper_results import _common as C

    a = C.random_subset(1000, 50, np.random.default_rng(3))
    b = C.random_subset(1000, 50, np.random.default_rng(3))
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50 and np.all(np.diff(a) > 0)
    assert np.array_equal(C.random_subset(10, None, np.random.default_rng(0)), np.arange(10))
    assert np.array_equal(C.random_subset(10, 20, np.random.default_rng(0)), np.arange(10))


def _run(tmp_path, cache=True):
    import argparse

    from paper_results import _common as C

    args = argparse.Namespace(quick=True, out=str(tmp_path / "out"), no_cache=not cache, no_progress=True,
                              cache_dir=str(tmp_path / "cache"), threads=None, seed=0, data_dir=None)
    return C.Run("unit", args)


def test_chunked_caches_resumes_and_survives_a_torn_file(tmp_path):
    calls = []

    def fn(sub):
        calls.append(sub.tolist())
        return {"sq": sub ** 2, "idx": sub}

    run = _run(tmp_path)
    idx = np.arange(10)
    r1 = run.chunked(fn, idx, chunk=4, desc="t", key="k")
    assert np.array_equal(r1["sq"], idx ** 2) and len(calls) == 3
    r2 = run.chunked(fn, idx, chunk=4, desc="t", key="k")  # all from the cache
    assert len(calls) == 3 and np.array_equal(r2["sq"], r1["sq"])
    files = sorted(run.cache.glob("*.npz"))
    assert len(files) == 3
    files[0].write_bytes(b"torn")  # an interrupted write: recomputed, not an error
    r3 = run.chunked(fn, idx, chunk=4, desc="t", key="k")
    assert len(calls) == 4 and np.array_equal(r3["sq"], r1["sq"])
    run.chunked(fn, idx, chunk=4, desc="t", key="other")  # another key: recomputed
    assert len(calls) == 7
    nocache = _run(tmp_path, cache=False)
    nocache.chunked(fn, idx, chunk=4, desc="t", key="k")
    assert len(calls) == 10


def test_eps_at_interpolates_the_fooling_curve():
    from paper_results.fig2_fooling_curves import eps_at

    eps = np.array([1.0, 2.0, 3.0])
    assert eps_at(np.array([0.5, 0.8, 1.0]), eps) == pytest.approx(2.5)
    assert eps_at(np.array([0.95, 1.0, 1.0]), eps) == pytest.approx(0.9 / 0.95)
    assert np.isnan(eps_at(np.array([0.1, 0.2, 0.3]), eps))


def test_md_table_shape():
    from paper_results import _common as C

    t = C.md_table(["a", "b", "c"], [[1, 2, 3], ["x", "y", "z"]])
    lines = t.strip().splitlines()
    assert len(lines) == 4 and all(line.count("|") == 4 for line in lines)


def test_missing_weights_name_the_training_command(tmp_path, monkeypatch):
    from paper_results import _common as C

    spec = C.MODELS["vgg-adv"]
    monkeypatch.setitem(C.MODELS, "vgg-adv", C.ModelSpec(**{**spec.__dict__, "weights": "nowhere/none.pt"}))
    with pytest.raises(FileNotFoundError, match="train_mnist_models.py --model vgg-adv"):
        C.load_model("vgg-adv")


def test_unknown_script_name_prints_usage():
    out = subprocess.run([sys.executable, "-m", "paper_results", "nonsense"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "python -m paper_results all" in out.stdout


# ---------------------------------------------------------------------------------- training script
@needs_data
def test_train_mnist_models_trains_resumes_and_writes_metadata(tmp_path):
    import torch

    out = tmp_path / "m.pt"
    base = [sys.executable, "paper_results/train_mnist_models.py", "--model", "lenet-adv", "--train-limit", "512",
            "--epochs", "2", "--out", str(out), "--no-progress", "--threads", "1"]
    r = subprocess.run(base + ["--pause-after", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "paused after epoch 1/2" in r.stdout and not out.exists()
    r = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["epochs"] == 2 and len(meta["history"]) == 2 and meta["train_images"] == 512
    assert "FGM" in meta["adversarial_training"] and 0.0 < meta["test_accuracy"] <= 1.0
    from fisher_ref.backends.torch_models import lenet5

    lenet5(activation="elu", dropout=0.5).load_state_dict(torch.load(out, weights_only=True))
    # a checkpoint written with other settings is refused, not silently mixed in
    other = [("3" if a == "2" and base[i - 1] == "--epochs" else a) for i, a in enumerate(base)]
    r = subprocess.run(other, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "other settings" in r.stderr


def test_cifar_cutout_blanks_one_clipped_square_per_image():
    import torch

    from paper_results.train_cifar_vgg import PAD, augmented_batch

    images = torch.full((6, 3, 32 + 2 * PAD, 32 + 2 * PAD), 255, dtype=torch.uint8)  # white, padding too
    images[..., :PAD, :] = images[..., -PAD:, :] = 255
    idx = torch.arange(6)
    plain = augmented_batch(torch, images, idx, torch.Generator().manual_seed(1))
    cut = augmented_batch(torch, images, idx, torch.Generator().manual_seed(1), cutout=8)
    assert torch.equal(plain, torch.ones_like(plain))
    blank = (cut == 0).all(dim=1)  # (n, 32, 32): all three channels blanked together
    assert torch.equal((cut == 0).any(dim=1), blank)
    for m in blank:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8  # clipped at the edges, never larger
        assert int(m.sum()) == len(rows) * len(cols)  # one axis-aligned rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()


def test_cifar_fine_tune_refuses_to_overwrite_its_starting_weights(tmp_path):
    start = tmp_path / "w.pt"
    start.write_bytes(b"not read")
    r = subprocess.run([sys.executable, "paper_results/train_cifar_vgg.py", "--init-from", str(start), "--out", str(start)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--out" in r.stderr and "--init-from" in r.stderr
    assert start.read_bytes() == b"not read"
    r = subprocess.run([sys.executable, "paper_results/train_cifar_vgg.py", "--cutout", "40"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--cutout" in r.stderr


def test_fgm_l2_examples_have_the_asked_norm():
    import torch

    from fisher_ref.backends.torch_models import lenet5
    from paper_results.train_mnist_models import fgm_l2

    net = lenet5(activation="elu")
    x = torch.rand(5, 1, 28, 28) * 0.5 + 0.25  # away from the bounds: no clipping
    eps = torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0])
    xa = fgm_l2(torch, net, x, torch.arange(5), eps)
    assert torch.allclose((xa - x).flatten(1).norm(dim=1), eps, atol=1e-5)


# ------------------------------------------------------------------------------- the quick run, whole
EXPECTED = {
    "table1": ["table1_timing.md", "table1_timing.csv", "table1/spectrum_methods.md"],
    "fig2": ["fig2_fooling_curves.md", "fig2_fooling_curves.csv", "fig2_fooling_curves.png"],
    "table2": ["table2_least_perturbation.md", "table2_least_perturbation.csv"],
    "table3": ["table3_transfer.md", "table3_transfer.csv"],
    "fig3": ["fig3_eigenvalue_scatter.md", "fig3_eigenvalue_scatter.csv", "fig3_eigenvalue_scatter.png"],
    "fig4": ["fig4_eigenvalue_distribution.md", "fig4_eigenvalue_distribution.csv",
             "fig4_eigenvalue_distribution.png"],
    "table4": ["table4_detection.md", "table4_detection.csv", "table4_roc.png"],
    "table5": ["table5_generalisation.md", "table5_generalisation.csv"],
    "budgets": ["budget_rules.md", "budget_rules.csv"],
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not _have_data():
        pytest.skip("needs ../shared/data (MNIST IDX and CIFAR-10 JPEG)")
    tmp = tmp_path_factory.mktemp("paper")
    cmd = [sys.executable, "-m", "paper_results", "all", "--quick", "--out", str(tmp / "out"),
           "--cache-dir", str(tmp / "cache"), "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return tmp, r


def test_quick_run_writes_every_table_and_figure(quick_run):
    from PIL import Image

    tmp, r = quick_run
    out = tmp / "out"
    assert f"{len(EXPECTED)} of {len(EXPECTED)} done" in r.stdout  # "all" runs every script but adaptive
    for script, files in EXPECTED.items():
        summary = json.loads((out / f"{script}.json").read_text())
        assert summary["quick"] is True and summary["script"] == script
        for f in files:
            p = out / f
            assert p.is_file() and p.stat().st_size > 0, p
            if f.endswith(".png"):
                with Image.open(p) as im:
                    im.verify()
                with Image.open(p) as im:
                    assert im.size[0] > 600 and im.size[1] > 300
                    # a real plot, not a blank canvas: many distinct colours
                    assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
            if f.endswith(".csv"):
                with open(p) as fh:
                    rows = list(csv.reader(fh))
                assert len(rows) > 1 and all(len(row) == len(rows[0]) for row in rows)
            if f.endswith(".md") and not f.startswith("table1/"):
                text = p.read_text()
                assert "Quick run" in text and "| " in text


def test_quick_run_puts_the_papers_numbers_beside_ours(quick_run):
    tmp, _ = quick_run
    out = tmp / "out"
    assert "94.98" in (out / "table2_least_perturbation.md").read_text()          # Table 2 FGM MNIST rate
    assert "62.02" in (out / "table3_transfer.md").read_text()                    # Table 3 LeNet <- VGG
    assert "96.11" in (out / "table4_detection.md").read_text()                   # Table 4 Ours MNIST FGM
    assert "91.17" in (out / "table5_generalisation.md").read_text()              # Table 5 OSSA -> FGM
    assert "58.63" in (out / "table1_timing.md").read_text() or "1.49" in (out / "table1_timing.md").read_text()


def test_quick_run_values_are_sane(quick_run):
    tmp, _ = quick_run
    out = tmp / "out"
    t2 = json.loads((out / "table2.json").read_text())
    for ds in ("mnist", "cifar"):
        for a in ("fgm", "ossa"):
            s = t2[ds][a]
            assert 0.0 <= s["rate"] <= 1.0 and (s["n_fooled"] == 0 or 0.0 <= s["mean"] <= 6.0)
    t3 = json.loads((out / "table3.json").read_text())
    rate = np.array(t3["rate"], dtype=float)
    assert rate.shape == (4, 4) and np.allclose(np.diag(rate)[np.isfinite(np.diag(rate))], 1.0)
    t4 = json.loads((out / "table4.json").read_text())
    for ds in ("mnist", "cifar"):
        vals = [v for row in t4[ds]["auc"].values() for v in row.values() if v is not None and np.isfinite(v)]
        assert vals and all(0.0 <= v <= 1.0 for v in vals)
    budgets = json.loads((out / "budgets.json").read_text())["rows"]
    assert {r[1] for r in budgets} == {"FGM p90", "fixed", "1.1 x least"}
    # 1.1 x each input's own least FGM perturbation: FGM fools (nearly) every input it can fool at all
    assert all(r[6] >= 0.8 for r in budgets if r[1] == "1.1 x least" and r[4] == "fgm")
    f3 = json.loads((out / "fig3.json").read_text())
    assert all(-1.0 <= f3[ds]["spearman_rho"] <= 1.0 for ds in ("mnist", "cifar"))


def test_rerun_takes_its_results_from_the_cache(quick_run):
    tmp, _ = quick_run
    before = json.loads((tmp / "out" / "table2.json").read_text())
    cached = sorted(p.name for p in (tmp / "cache" / "table2").glob("*.npz"))
    assert cached  # the first run wrote its chunks
    cmd = [sys.executable, "-m", "paper_results", "table2", "--quick", "--out", str(tmp / "again"),
           "--cache-dir", str(tmp / "cache"), "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = json.loads((tmp / "again" / "table2.json").read_text())
    for ds in ("mnist", "cifar"):
        assert after[ds]["fgm"] == before[ds]["fgm"] and after[ds]["ossa"] == before[ds]["ossa"]
    assert sorted(p.name for p in (tmp / "cache" / "table2").glob("*.npz")) == cached  # nothing recomputed


@needs_data
def test_the_figures_use_the_asked_cifar_model_and_only_the_asked_data_sets(tmp_path):
    """Figures 2-4 once ran the default CIFAR model whatever --cifar-model said, and both data sets
    whatever --datasets said; now the summary, the table and the figure are the asked model's alone."""
    from PIL import Image

    cmd = [sys.executable, "-m", "paper_results", "fig2", "fig3", "fig4", "--quick", "--cifar-model", "vgg-cifar-w1",
           "--datasets", "cifar", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
           "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    out = tmp_path / "out"
    f2, f3, f4 = (json.loads((out / f"fig{i}.json").read_text()) for i in (2, 3, 4))
    meta = {"script", "command", "quick", "seed", "seconds", "machine", "date"}
    assert set(f2) - meta == {"cifar"} and f2["cifar"]["model"] == "VGG (full width)"
    assert set(f3) - meta == {"cifar"} and f3["cifar"]["model"] == "VGG (full width)"
    assert set(f4) - meta == {"growth_cifar"} and f4["growth_cifar"]["model"] == "VGG (full width)"
    for name in ("fig2_fooling_curves", "fig3_eigenvalue_scatter", "fig4_eigenvalue_distribution"):
        rows = list(csv.reader(open(out / f"{name}.csv")))
        assert {row[0] if name != "fig4_eigenvalue_distribution" else row[1] for row in rows[1:]} == {"cifar"}
        md = (out / f"{name}.md").read_text()
        assert "MNIST" not in md.split("CIFAR-10 (JPEG): the shared copy")[0]
        with Image.open(out / f"{name}.png") as im:
            assert im.size[0] > 300 and im.size[1] > 300
    assert f2["command"] == "python -m paper_results fig2 --quick --cifar-model vgg-cifar-w1 --datasets cifar"


def test_a_script_with_no_part_for_the_asked_data_refuses_by_name_and_all_skips_it(tmp_path, capsys):
    """Tables 3 and 5 are MNIST-only: they used to run MNIST under --datasets cifar or --cifar-model X."""
    from paper_results import _common as C
    from paper_results.__main__ import idle_scripts
    from paper_results.table3_transfer import RUNS_ON

    p = C.parser("test", runs_on=RUNS_ON)
    for bad, flag in ((["--datasets", "cifar"], "--datasets"), (["--cifar-model", "vgg-cifar-w1"], "--cifar-model")):
        with pytest.raises(SystemExit) as exc:
            p.parse_args(bad)
        assert exc.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err
    assert p.parse_args(["--datasets", "mnist,cifar"]).datasets == ("mnist", "cifar")
    assert set(idle_scripts(["table2", "table3", "table5", "fig2"], ["--datasets", "cifar"])) == {"table3", "table5"}
    assert set(idle_scripts(["table3", "table4"], ["--cifar-model", "vgg-cifar-w1-ft"])) == {"table3"}
    assert idle_scripts(["table3", "table5"], ["--datasets", "mnist"]) == {}
    out = tmp_path / "out"  # named: refused before anything runs or is written
    r = subprocess.run([sys.executable, "-m", "paper_results", "table2", "table3", "--datasets", "cifar", "--out",
                        str(out), "--cache-dir", str(tmp_path / "cache")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "table3: argument --datasets:" in r.stderr and "== table2" not in r.stdout
    assert not out.exists()


def test_table1_measures_the_asked_data_sets_rows(tmp_path):
    cmd = [sys.executable, "-m", "paper_results", "table1", "--quick", "--datasets", "mnist", "--threads", "1",
           "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "table1" / "spectrum_methods.json").read_text())
    assert [row["row"] for row in res["results"]] == ["mnist"]

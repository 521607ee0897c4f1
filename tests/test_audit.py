"""``fisher-ref audit``: end to end on the bundled model, resumption, Dask, data formats, bad input."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fisher_ref as fr  # noqa: E402
import fisher_ref.audit as audit_pkg  # noqa: E402
from fisher_ref.__main__ import main  # noqa: E402
from fisher_ref.audit import AuditError, AuditResult, _shards, audit  # noqa: E402
from fisher_ref.backends import OnnxBackend, bundled_path  # noqa: E402
from fisher_ref.datasets import load_bundled_mnist  # noqa: E402

from _report_html import check_file_list  # noqa: E402
from _onnx_models import (  # noqa: E402
    int_input_model,
    linear_model,
    linear_weights,
    two_input_model,
    undifferentiable_model,
    wrong_rank_output_model,
)

# the bundled example, small: 20 inputs in 4 shards of 5, k = 3
SMALL = ["--limit", "20", "--k", "3", "--shard-size", "5", "--epsilons", "0.5", "1", "2", "--no-progress"]
SMALL_KW = dict(limit=20, k=3, shard_size=5, epsilons=(0.5, 1, 2), progress=False)
FAST = dict(k=2, epsilons=(0.5, 1.0), progress=False, report=False)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    return header, rows


def assert_same_csv(a: Path, b: Path) -> None:
    """Two results.csv hold the same results: integer and boolean columns equal, floats to float32 rounding.

    (They are byte-identical in practice; ONNX Runtime's float32 kernels may round differently when its
    thread pool splits work differently, so the test does not insist on the last bit.)
    """
    ha, ra = read_csv(a)
    hb, rb = read_csv(b)
    assert ha == hb and len(ra) == len(rb)
    exact = [c for c in ha if c in ("index", "label", "prediction", "correct", "adv_prediction") or "_fooled_" in c]
    assert [[r[c] for c in exact] for r in ra] == [[r[c] for c in exact] for r in rb]
    for c in ("confidence", "least_perturbation_ossa", "adv_confidence"):
        np.testing.assert_allclose([float(r[c] or "nan") for r in ra], [float(r[c] or "nan") for r in rb],
                                   rtol=1e-5, err_msg=c)
    lam = [c for c in ha if c.startswith("lambda_")]
    la = np.array([[float(r[c]) for c in lam] for r in ra])
    lb = np.array([[float(r[c]) for c in lam] for r in rb])
    assert np.all(np.abs(la - lb) <= 1e-5 * la[:, :1])  # relative to lambda_1: the tail is rounding noise


def image_model(shape, n_classes: int = 3, *, seed: int = 0, mean=None, std=None) -> onnx.ModelProto:
    """Flatten + Gemm on inputs of ``shape``; with mean/std, ``(x - mean) / std`` baked in first."""
    rng = np.random.default_rng(seed)
    d = math.prod(shape)
    W = (rng.standard_normal((n_classes, d)) * 0.1).astype(np.float32)
    b = (rng.standard_normal(n_classes) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")]
    nodes, src = [], "x"
    if mean is not None:
        cshape = (len(mean), 1, 1)
        inits += [numpy_helper.from_array(np.asarray(mean, np.float32).reshape(cshape), "mean"),
                  numpy_helper.from_array(np.asarray(std, np.float32).reshape(cshape), "std")]
        nodes += [helper.make_node("Sub", ["x", "mean"], ["xc"]), helper.make_node("Div", ["xc", "std"], ["xn"])]
        src = "xn"
    nodes += [helper.make_node("Flatten", [src], ["f"], axis=1),
              helper.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "image_linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model


# ------------------------------------------------------------------------------ the bundled model
@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    """The bundled LeNet on 20 bundled MNIST images, with the report (computed once)."""
    out = tmp_path_factory.mktemp("bundled") / "audit"
    res = audit(out=out, **SMALL_KW)
    return res


def test_bundled_end_to_end_writes_every_file(bundled_run):
    res = bundled_run
    assert isinstance(res, AuditResult) and res.complete
    assert res.n_inputs == 20 and res.n_shards == 4 and res.shards_computed == [0, 1, 2, 3]
    for name in ("results.csv", "summary.json", "report.html", "fooling_rate.png", "eigenvalues.png", "scatter.png",
                 "vulnerable_least_perturbation.png", "vulnerable_top_eigenvalue.png"):
        assert (res.out / name).is_file(), name
        if name.endswith(".png"):
            assert (res.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for i in range(4):
        assert (res.out / "shards" / f"shard-{i:05d}.csv").is_file()
        assert (res.out / "shards" / f"shard-{i:05d}.npz").is_file()
    page = (res.out / "report.html").read_text()
    srcs = [s.split('"')[0] for s in page.split('src="')[1:]]
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_report_lists_and_links_every_file(bundled_run):
    out = bundled_run.out
    page = (out / "report.html").read_text()
    linked = check_file_list(page, out / "report.html", n_shards=4)
    for name in ("report.html", "results.csv", "summary.json", "manifest.json", "fooling_rate.png",
                 "vulnerable_least_perturbation.png", "shards/", "shards/shard-00000.npz", "shards/shard-00003.csv"):
        assert name in linked, name
    assert ">fooling_rate.png</code></a>" in page  # the name verbatim, underscores and all
    # the plots shown are the PNG files listed
    import base64

    shown = [base64.b64decode(s.split('"')[0].split(",", 1)[1]) for s in page.split('src="')[1:]]
    assert shown == [(out / n).read_bytes() for n in ("fooling_rate.png", "eigenvalues.png", "scatter.png",
                                                      "vulnerable_least_perturbation.png",
                                                      "vulnerable_top_eigenvalue.png")]


def test_report_explains_itself(bundled_run):
    page = (bundled_run.out / "report.html").read_text()
    how = page.index('<section id="how-to-read">')
    assert how < page.index("<h2>Fooling rate</h2>")  # near the top, before the first plot
    text = page[how:page.index("</section>", how)]
    for term in ("How to read this report", "top Fisher eigenvalue", "Fooling-rate curve", "Histogram", "Scatter",
                 "Panels", "A vulnerable input", "Spearman",
                 "label 8 &rarr; 3"):
        assert term in text, term
    from fisher_ref.audit._report import coincidence_notes

    s = bundled_run.summary
    notes = coincidence_notes({"ossa": s["fooling_rate"]["ossa"], "fgm": s["fooling_rate"]["fgm"]})
    for note in notes:  # a note in the caption when the curves coincide
        assert note.replace("epsilon", "&epsilon;") in page


def test_coincidence_notes():
    from fisher_ref.audit._report import coincidence_notes

    assert coincidence_notes({"ossa": [0.1, 0.5], "fgm": [0.105, 0.49]}) == [
        "OSSA and FGM coincide within 1.0 percentage points at every epsilon"]
    assert coincidence_notes({"ossa": [0.1, 0.5], "fgm": [0.1, 0.5]}) == ["OSSA and FGM coincide at every epsilon"]
    assert coincidence_notes({"ossa": [0.1, 0.5], "fgm": [0.1, 0.6]}) == []  # 10 points apart at epsilon 2
    assert coincidence_notes({"ossa": [None, 0.5], "fgm": [None, 0.5]}) == ["OSSA and FGM coincide at every epsilon"]
    assert coincidence_notes({"ossa": [None], "fgm": [None]}) == []  # nothing was attacked: nothing to say
    assert coincidence_notes({"ossa": [0.1], "fgm": [0.2]}, within=0.2) != []


def test_panel_titles_explain_themselves():
    from fisher_ref.audit._report import panel_titles

    e = dict(index=466, label=8, prediction=8, least_perturbation=0.0625, adv_prediction=3, top_eigenvalue=27.33)
    assert panel_titles(e, max_epsilon=6) == ("input #466\nlabel 8 \u2192 3", "\u03b5 = 0.0625",
                                              "$\\lambda_1$ = 27.3")
    unlabelled = {**e, "label": None}
    assert panel_titles(unlabelled, max_epsilon=6)[0] == "input #466\nprediction 8 \u2192 3"
    missed = {**e, "least_perturbation": math.inf, "adv_prediction": None}
    assert panel_titles(missed, max_epsilon=6)[:2] == ("input #466\nlabel 8, not fooled", "none within \u03b5 \u2264 6")
    names = ["airplane", "automobile", "bird", "cat"]
    top = panel_titles({**e, "label": 1, "adv_prediction": 3}, names, max_epsilon=6)[0]
    assert top == "input #466\nlabel 1 automobile\n\u2192 3 cat"  # too wide for one line: the arrow wraps


def test_results_csv_columns_and_rows(bundled_run):
    header, rows = read_csv(bundled_run.out / "results.csv")
    assert header == (["index", "label", "prediction", "confidence", "correct", "lambda_1", "lambda_2", "lambda_3",
                       "ossa_fooled_eps0.5", "ossa_fooled_eps1", "ossa_fooled_eps2",
                       "fgm_fooled_eps0.5", "fgm_fooled_eps1", "fgm_fooled_eps2",
                       "least_perturbation_ossa", "adv_prediction", "adv_confidence"])
    assert len(rows) == 20
    assert [int(r["index"]) for r in rows] == list(range(20))
    _, y = load_bundled_mnist()
    assert [int(r["label"]) for r in rows] == y[:20].tolist()
    for r in rows:
        lam = [float(r[f"lambda_{i}"]) for i in (1, 2, 3)]
        assert lam == sorted(lam, reverse=True) and lam[2] >= 0
        assert r["correct"] == str(int(r["label"] == r["prediction"]))
        lp = float(r["least_perturbation_ossa"])
        assert lp == math.inf or 0 <= lp <= 6
        if 0 < lp < math.inf:  # the stored example at the least perturbation does fool the model
            assert r["adv_prediction"] != r["label"]
    # the per-shard CSVs concatenate to the merged one
    merged = (bundled_run.out / "results.csv").read_text().splitlines()
    parts = [(bundled_run.out / "shards" / f"shard-{i:05d}.csv").read_text().splitlines() for i in range(4)]
    assert merged == parts[0] + [line for p in parts[1:] for line in p[1:]]


def test_results_agree_with_the_library(bundled_run):
    x, y = load_bundled_mnist()
    b = OnnxBackend(bundled_path("mnist_lenet.onnx"))
    w, _ = fr.fisher_spectrum(x=x[:5], backend=b, k=3)
    lp = fr.least_perturbation(x=x[:5], backend=b, attack="ossa", labels=y[:5])
    r = fr.ossa(x[:5], b, epsilon=2.0, labels=y[:5])
    cols = bundled_run.columns
    np.testing.assert_array_equal(cols["eigenvalues"][:5], w)
    np.testing.assert_array_equal(cols["least_perturbation"][:5], lp)
    np.testing.assert_array_equal(cols["ossa_fooled"][:5, 2], r.success)
    with np.load(bundled_run.out / "shards" / "shard-00000.npz") as f:
        x_adv = f["x_adv"]
    ok = np.isfinite(lp) & (lp > 0)
    assert ok.any()
    norms = np.linalg.norm((x_adv[ok] - x[:5][ok]).reshape(ok.sum(), -1), axis=1)
    assert np.all(norms > 0) and np.all(norms <= lp[ok] + 1e-5)  # clipped to [0, 1]: never longer than epsilon
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    pred = b.probabilities(x_adv[ok].astype(np.float64)).argmax(axis=1)  # the example is stored as float32
    np.testing.assert_array_equal(pred, cols["adv_prediction"][:5][ok])
    assert np.all(pred != y[:5][ok])


def test_summary_json_keys(bundled_run):
    s = json.loads((bundled_run.out / "summary.json").read_text())
    assert {"n_inputs", "n_correct", "accuracy", "fooling_rate", "top_eigenvalue", "least_perturbation", "spearman",
            "most_vulnerable", "model", "data", "config", "run", "files"} <= set(s)
    assert s["n_inputs"] == 20
    assert s["fooling_rate"]["epsilons"] == [0.5, 1.0, 2.0]
    assert len(s["fooling_rate"]["ossa"]) == len(s["fooling_rate"]["fgm"]) == 3
    assert all(0 <= v <= 1 for v in s["fooling_rate"]["ossa"] + s["fooling_rate"]["fgm"])
    assert s["fooling_rate"]["n"] == s["n_correct"]
    assert -1 <= s["spearman"]["rho"] <= 1
    mv = s["most_vulnerable"]
    lams = [e["top_eigenvalue"] for e in mv["by_top_eigenvalue"]]
    lps = [e["least_perturbation"] for e in mv["by_least_perturbation"]]
    assert lams == sorted(lams, reverse=True) and lps == sorted(lps) and len(lams) == 8
    assert s["model"]["input_shape"] == [1, 28, 28] and s["model"]["n_classes"] == 10
    assert s["data"]["has_labels"] and s["config"]["k"] == 3 and s["config"]["n_shards"] == 4


def test_cli_small_run_prints_where_it_wrote(tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, err = run(["audit", "--out", out, "--limit", "10", "--k", "2", "--no-progress", "--no-report"], capsys)
    assert code == 0, err
    assert f"wrote {out}/" in stdout and "fooling rate over" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "results.csv", "shards", "summary.json"]


def test_no_arguments_runs_the_bundled_audit(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(model, data, **kw):
        seen.update(model=model, data=data, **kw)
        raise AuditError("stub")

    monkeypatch.setattr(audit_pkg, "audit", fake)
    for argv in ([], ["audit"]):
        seen.clear()
        code, _, err = run(argv, capsys)
        assert code == 2 and "stub" in err
        assert seen["model"] is None and seen["data"] is None and seen["out"] is None and seen["limit"] is None


def test_default_output_folder_is_fresh(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["audit", "--limit", "5", "--k", "2", "--no-progress", "--no-report"]
    assert run(argv, capsys)[0] == 0
    assert run(argv, capsys)[0] == 0
    runs = sorted((tmp_path / "fisher-ref-audit").iterdir())
    assert len(runs) == 2 and all(p.name.startswith("run-") for p in runs)
    assert all((p / "results.csv").is_file() for p in runs)


@pytest.mark.slow
def test_plain_fisher_ref_on_all_bundled_images(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run([], capsys)
    assert code == 0, err
    (folder,) = (tmp_path / "fisher-ref-audit").iterdir()
    _, rows = read_csv(folder / "results.csv")
    assert len(rows) == 500
    s = json.loads((folder / "summary.json").read_text())
    assert s["spearman"]["rho"] < -0.5  # the paper's Figure 3: larger eigenvalue, smaller perturbation


# ------------------------------------------------------------------------------ resume, force
def test_resume_after_max_shards(bundled_run, tmp_path):
    out = tmp_path / "a"
    first = audit(out=out, max_shards=2, **SMALL_KW)
    assert not first.complete and first.shards_computed == [0, 1]
    assert not (out / "results.csv").exists()
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").glob("shard-*")}
    assert len(done) == 4
    second = audit(out=out, resume=True, **SMALL_KW)
    assert second.complete and second.shards_skipped == [0, 1] and second.shards_computed == [2, 3]
    p = out / "shards"
    assert {name: ((p / name).stat().st_mtime_ns, (p / name).read_bytes()) for name in done} == done  # untouched
    assert_same_csv(out / "results.csv", bundled_run.out / "results.csv")


def test_resume_after_interrupt_recomputes_nothing_done(bundled_run, tmp_path, monkeypatch, capsys):
    """Ctrl-C during shard 2: shards 0 and 1 stay on disk; --resume computes 2 and 3 only."""
    calls = []
    real = _shards.compute_shard

    def interrupted(spec, x, y, index):
        calls.append(int(index[0]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec, x, y, index)

    monkeypatch.setattr(_shards, "compute_shard", interrupted)
    out = tmp_path / "a"
    code, _, err = run(["audit", "--out", out, *SMALL], capsys)
    assert code == 130 and "--resume" in err
    assert sorted(p.name for p in (out / "shards").glob("shard-*.csv")) == ["shard-00000.csv", "shard-00001.csv"]
    calls.clear()
    code, stdout, err = run(["audit", "--out", out, "--resume", *SMALL], capsys)
    assert code == 0, err
    assert calls == [10, 15]  # the first inputs of shards 2 and 3
    assert "2 resumed" in stdout
    assert_same_csv(out / "results.csv", bundled_run.out / "results.csv")


def test_resume_recomputes_a_deleted_shard(bundled_run, tmp_path):
    out = tmp_path / "a"
    shutil.copytree(bundled_run.out, out)
    (out / "shards" / "shard-00003.csv").unlink()
    (out / "results.csv").unlink()
    res = audit(out=out, resume=True, **SMALL_KW)
    assert res.shards_computed == [3] and res.shards_skipped == [0, 1, 2]
    assert_same_csv(out / "results.csv", bundled_run.out / "results.csv")


def test_resume_refuses_another_configuration(bundled_run, tmp_path, capsys):
    out = tmp_path / "a"
    shutil.copytree(bundled_run.out, out)
    argv = ["audit", "--out", out, "--resume", *SMALL, "--k", "4"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "cannot resume" in err and "k" in err and "--force" in err


def test_existing_output_needs_force(bundled_run, tmp_path, capsys):
    out = tmp_path / "a"
    shutil.copytree(bundled_run.out, out)
    (out / "notes.txt").write_text("mine")
    code, _, err = run(["audit", "--out", out, *SMALL], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "already exists" in err and "--force" in err and "Traceback" not in err
    code, _, err = run(["audit", "--out", out, "--force", *SMALL[:-1], "--no-report", "--no-progress",
                        "--limit", "10"], capsys)
    assert code == 0, err
    _, rows = read_csv(out / "results.csv")
    assert len(rows) == 10
    assert not (out / "report.html").exists()  # the old report was removed, not left stale
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only what an audit writes
    assert sorted(p.name for p in (out / "shards").glob("shard-*.csv")) == ["shard-00000.csv", "shard-00001.csv"]


def test_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert audit(out=out, limit=3, **FAST).complete


# ------------------------------------------------------------------------------ Dask
def test_dask_local_cluster_gives_the_local_results(bundled_run, tmp_path, capsys):
    pytest.importorskip("distributed")
    out = tmp_path / "dask"
    code, stdout, err = run(["audit", "--out", out, *SMALL, "--no-report", "--scheduler", "local:2",
                             "--max-memory", "600M"], capsys)
    assert code == 0, err
    # each worker may hold twice the derivative-run budget (at least 1 GiB): 1.2 GB
    assert re.search(r"LocalCluster of 2 worker processes at tcp://127\.0\.0\.1:\d+, 1\.2 GB each", stdout), stdout
    assert_same_csv(out / "results.csv", bundled_run.out / "results.csv")
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["scheduler"] == "local:2"


def test_dask_bad_address(tmp_path, capsys):
    pytest.importorskip("distributed")
    code, _, err = run(["audit", "--out", tmp_path / "a", "--limit", "2", "--k", "2", "--no-report",
                        "--no-progress", "--scheduler", "local:zero"], capsys)
    assert code == 2 and "local:N" in err


# ------------------------------------------------------------------------------ data formats
@pytest.fixture(scope="module")
def images():
    """Six 8 x 8 RGB uint8 images (NHWC) with labels, and a model for (3, 8, 8) inputs."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    return x, y


def assert_same_results(a: AuditResult, b: AuditResult, rtol=0.0):
    for key in ("index", "label", "prediction", "ossa_fooled", "fgm_fooled", "adv_prediction"):
        np.testing.assert_array_equal(a.columns[key], b.columns[key], err_msg=key)
    for key in ("confidence", "eigenvalues", "least_perturbation"):
        np.testing.assert_allclose(a.columns[key], b.columns[key], rtol=rtol, atol=0 if rtol == 0 else 1e-7,
                                   err_msg=key)


def test_npy_npz_and_arrays_agree(tmp_path, images):
    x, y = images
    model = save(image_model((3, 8, 8)), tmp_path / "m.onnx")
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    np.save(tmp_path / "x.npy", xc)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "xy.npz", x=xc, y=y)
    ref = audit(model, tmp_path / "x.npy", labels=tmp_path / "y.npy", out=tmp_path / "a", **FAST)
    assert ref.summary["data"]["format"] == "npy" and ref.summary["data"]["scale"] == "divided by 255"
    np.testing.assert_array_equal(ref.columns["label"], y)
    other = audit(model, tmp_path / "xy.npz", out=tmp_path / "b", **FAST)
    assert other.summary["data"]["format"] == "npz"
    assert_same_results(ref, other)
    arr = audit(model, (xc.astype(np.float64) / 255, y), out=tmp_path / "c", **FAST)
    assert_same_results(ref, arr)


def test_nhwc_data_is_converted_to_nchw(tmp_path, images):
    x, y = images
    model = save(image_model((3, 8, 8)), tmp_path / "m.onnx")
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2), y=y)
    np.savez(tmp_path / "nhwc.npz", images=x, labels=y)
    ref = audit(model, tmp_path / "nchw.npz", out=tmp_path / "a", **FAST)
    auto = audit(model, tmp_path / "nhwc.npz", out=tmp_path / "b", **FAST)
    assert auto.summary["data"]["layout"] == "NHWC -> NCHW"
    assert_same_results(ref, auto)
    explicit = audit(model, tmp_path / "nhwc.npz", layout="nhwc", out=tmp_path / "c", **FAST)
    assert_same_results(ref, explicit)


def test_mean_std_equals_normalisation_inside_the_model(tmp_path, images):
    x, y = images
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    plain = save(image_model((3, 8, 8), seed=1), tmp_path / "plain.onnx")
    baked = save(image_model((3, 8, 8), seed=1, mean=mean, std=std), tmp_path / "baked.onnx")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a = audit(baked, tmp_path / "d.npz", out=tmp_path / "a", **FAST)
    b = audit(plain, tmp_path / "d.npz", mean=mean, std=std, out=tmp_path / "b", **FAST)
    assert b.summary["data"]["normalization"] == {"mean": mean, "std": std}
    assert_same_results(a, b, rtol=1e-4)
    c = audit(plain, tmp_path / "d.npz", out=tmp_path / "c", **FAST)  # without it the results differ
    assert not np.allclose(a.columns["eigenvalues"], c.columns["eigenvalues"], rtol=1e-2)


def _idx(arr: np.ndarray) -> bytes:
    code = {np.dtype("u1"): 0x08}[arr.dtype]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.tobytes()


def test_idx_pair(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(x)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y)))
    (tmp_path / "my-targets.idx").write_bytes(_idx(y))
    model = save(image_model((1, 8, 8)), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x[:, None])
    ref = audit(model, tmp_path / "x.npy", labels=y.astype(np.int64), out=tmp_path / "a", **FAST)
    auto = audit(model, tmp_path / "t10k-images-idx3-ubyte.gz", out=tmp_path / "b", **FAST)  # labels found by name
    assert auto.summary["data"]["format"] == "idx" and auto.summary["data"]["has_labels"]
    assert auto.summary["data"]["layout"].startswith("added a channel axis")
    assert_same_results(ref, auto)
    explicit = audit(model, tmp_path / "t10k-images-idx3-ubyte.gz", labels=tmp_path / "my-targets.idx",
                     out=tmp_path / "c", **FAST)
    assert_same_results(ref, explicit)
    folder = audit(model, tmp_path, out=tmp_path / "d", **FAST)  # MNIST four-file layout (test split)
    assert_same_results(ref, folder)


def test_image_folder(tmp_path, images):
    from PIL import Image

    x, y = images
    root = tmp_path / "imgs"
    order = []
    for name, lab in (("cat", 0), ("dog", 1), ("fox", 2)):
        (root / name).mkdir(parents=True)
        for j in np.flatnonzero(y == lab):
            Image.fromarray(x[j]).save(root / name / f"{j}.png")
            order.append(j)
    model = save(image_model((3, 8, 8)), tmp_path / "m.onnx")
    np.savez(tmp_path / "ref.npz", x=x[order], y=y[order])
    ref = audit(model, tmp_path / "ref.npz", out=tmp_path / "a", **FAST)
    res = audit(model, root, out=tmp_path / "b", **FAST)
    assert res.summary["data"]["format"] == "imagefolder"
    assert res.summary["data"]["class_names"] == ["cat", "dog", "fox"]
    assert_same_results(ref, res)
    # resize 8 x 8 images to the 4 x 4 a smaller model expects
    small = save(image_model((3, 4, 4)), tmp_path / "small.onnx")
    r = audit(small, root, resize=(4, 4), out=tmp_path / "c", **FAST)
    assert r.summary["data"]["resize"] == [4, 4] and r.n_inputs == 6


def test_cifar_pickle(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)
    model = save(image_model((3, 32, 32), n_classes=10), tmp_path / "m.onnx")
    np.savez(tmp_path / "ref.npz", x=data.reshape(4, 3, 32, 32), y=np.array(labels))
    ref = audit(model, tmp_path / "ref.npz", out=tmp_path / "a", **FAST)
    for src, name in ((tmp_path, "b"), (folder / "test_batch", "c")):
        res = audit(model, src, out=tmp_path / name, **FAST)
        assert res.summary["data"]["format"] == "cifar" and res.summary["data"]["layout"] == "NHWC -> NCHW"
        assert res.summary["data"]["class_names"][3] == "cat"
        assert_same_results(ref, res)


def test_data_without_labels_attacks_the_predictions(tmp_path, capsys):
    W, b = linear_weights(d=4, n_classes=3)
    model = save(linear_model(W * 0.3, b), tmp_path / "lin.onnx")
    x = np.random.default_rng(0).random((7, 4))
    np.save(tmp_path / "x.npy", x)
    code, stdout, err = run(["audit", model, "--data", tmp_path / "x.npy", "--out", tmp_path / "a", "--k", "2",
                             "--shard-size", "3", "--no-progress"], capsys)
    assert code == 0, err
    assert "no labels: attacking the predictions" in stdout
    _, rows = read_csv(tmp_path / "a" / "results.csv")
    assert len(rows) == 7 and all(r["label"] == "" and r["correct"] == "" for r in rows)
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["accuracy"] is None and s["fooling_rate"]["n"] == 7
    page = (tmp_path / "a" / "report.html").read_text()  # no images, no labels: said so, every file still listed
    linked = check_file_list(page, tmp_path / "a" / "report.html", n_shards=3)
    assert "vulnerable_top_eigenvalue.png" not in linked and "its inputs are not images" in page
    assert "the attack changes each input's prediction" in page and "A correctly classified input" not in page
    # labels from a text file
    (tmp_path / "y.txt").write_text("0\n1\n2\n0\n1\n2\n0\n")
    code, _, err = run(["audit", model, "--data", tmp_path / "x.npy", "--labels", tmp_path / "y.txt",
                        "--out", tmp_path / "b", "--k", "2", "--no-progress", "--no-report"], capsys)
    assert code == 0, err
    _, rows = read_csv(tmp_path / "b" / "results.csv")
    assert [r["label"] for r in rows] == ["0", "1", "2", "0", "1", "2", "0"]


# ------------------------------------------------------------------------------ bad input: exit 2, one line
def _bad_models(tmp_path: Path) -> dict:
    (tmp_path / "corrupt.onnx").write_bytes(b"this is not an ONNX file")
    return {
        "missing": tmp_path / "nowhere.onnx",
        "corrupt": tmp_path / "corrupt.onnx",
        "two_inputs": save(two_input_model(), tmp_path / "two.onnx"),
        "int_input": save(int_input_model(), tmp_path / "int.onnx"),
        "rank3_declared": save(wrong_rank_output_model(True), tmp_path / "rank3a.onnx"),
        "rank3_hidden": save(wrong_rank_output_model(False), tmp_path / "rank3b.onnx"),
        "undifferentiable": save(undifferentiable_model(), tmp_path / "seq.onnx"),
    }


@pytest.mark.parametrize("case, message", [
    ("missing", "no such ONNX file"),
    ("corrupt", "is not an ONNX model or is corrupt"),
    ("two_inputs", "has 2 graph inputs ['a', 'c']; pass --input-name"),
    ("int_input", "has element type INT64; OnnxBackend differentiates a float32 or float64 input"),
    ("rank3_declared", "expected class scores of shape (batch, n_classes)"),
    ("rank3_hidden", "expected class scores of shape (2, n_classes)"),
    ("undifferentiable", "cannot differentiate operator ConcatFromSequence (node 'from_sequence')"),
])
def test_bad_model(tmp_path, capsys, case, message):
    model = _bad_models(tmp_path)[case]
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 4)))
    code, stdout, err = run(["audit", model, "--data", tmp_path / "x.npy", "--out", tmp_path / "out",
                             "--no-progress"], capsys)
    assert code == 2
    assert err.startswith(f"fisher-ref audit: error: model {model}") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_bad_model_with_debug_raises(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4)))
    with pytest.raises(AuditError, match="no such ONNX file"):
        main(["audit", str(tmp_path / "nowhere.onnx"), "--data", str(tmp_path / "x.npy"), "--out",
              str(tmp_path / "o"), "--debug"])


def test_two_inputs_with_input_name_still_refused(tmp_path, capsys):
    model = save(two_input_model(), tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    code, _, err = run(["audit", model, "--data", tmp_path / "x.npy", "--input-name", "a", "--out", tmp_path / "o"],
                       capsys)
    assert code == 2 and "besides --input-name 'a'" in err


@pytest.fixture
def lin(tmp_path):
    W, b = linear_weights(d=4, n_classes=3)
    return save(linear_model(W, b), tmp_path / "lin.onnx")


def _x(shape=(5, 4), fill=None):
    x = np.random.default_rng(1).random(shape)
    if fill is not None:
        x[2, 1] = fill
    return x


@pytest.mark.parametrize("data, extra, message", [
    (_x((5, 5)), [], "inputs have shape (5,), but the model expects (4,) per input"),
    (_x((5, 2, 3)), [], "inputs have shape (2, 3), but the model expects (4,) per input"),
    (_x((2, 2)), [], "the whole array (2, 2) has the size of one input: if it is a single input, add a batch axis "
                     "(save it with shape (1, 2, 2)"),
    (_x((4,)), [], "data has shape (4,); expected a batch (n, *input_shape): if it is a single input, add a batch "
                   "axis (save it with shape (1, 4)"),
    (_x(fill=np.nan), [], "data contains 1 NaN and 0 Inf values (in 1 input, the first at index 2)"),
    (_x(fill=np.inf), [], "data contains 0 NaN and 1 Inf values"),
    (np.zeros((0, 4)), [], "data is empty"),
    (np.array(["a", "b"]), [], "data must hold real numbers"),
    (_x(), ["--labels", "LABELS:0,1"], "labels: 2 labels for 5 inputs"),
    (_x(), ["--labels", "LABELS:0,1,2,3,7"], "labels must lie in [0, 2]"),
    (_x() * 3, ["--bounds", "0", "1"], "outside bounds [0, 1]"),
    (_x(), ["--k", "0"], "k must be a positive int"),
    (_x(), ["--epsilons", "-1"], "epsilons must be one or more positive numbers"),
    (_x(), ["--mean", "0.5"], "mean and std go together"),
    (_x(), ["--mean", "0.5", "0.5", "--std", "1", "1"], "mean has 2 values"),
])
def test_bad_data(tmp_path, capsys, lin, data, extra, message):
    np.save(tmp_path / "x.npy", data)
    args = []
    for a in extra:
        if a.startswith("LABELS:"):
            np.save(tmp_path / "y.npy", np.array([int(v) for v in a[7:].split(",")]))
            a = tmp_path / "y.npy"
        args.append(a)
    code, _, err = run(["audit", lin, "--data", tmp_path / "x.npy", "--out", tmp_path / "out", "--no-progress", *args],
                       capsys)
    assert code == 2, err
    assert err.startswith("fisher-ref audit: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nothing.npy", "no such file or folder"),
    (lambda p: (p / "junk.bin").write_bytes(b"hello world") and p / "junk.bin", "cannot tell the format"),
    (lambda p: (p / "bad.npz").write_bytes(b"PK broken") and p / "bad.npz", "cannot read"),
    (lambda p: np.savez(p / "odd.npz", a=np.zeros((2, 4)), b=np.zeros(2)) or p / "odd.npz", "holds arrays ['a', 'b']"),
    (lambda p: (p / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((2, 2, 2), np.uint8))[:-3])
     and p / "t10k-images-idx3-ubyte", "truncated IDX file"),
])
def test_unreadable_data(tmp_path, capsys, lin, make, message):
    path = make(tmp_path)
    code, _, err = run(["audit", lin, "--data", path, "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_model_without_data(tmp_path, capsys, lin):
    code, _, err = run(["audit", lin, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "--data" in err


def test_unwritable_output_folder(tmp_path, capsys, lin):
    np.save(tmp_path / "x.npy", _x())
    (tmp_path / "file").write_text("")
    code, _, err = run(["audit", lin, "--data", tmp_path / "x.npy", "--out", tmp_path / "file" / "out"], capsys)
    assert code == 2 and "cannot write to output folder" in err and "is a file, not a folder" in err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            code, _, err = run(["audit", lin, "--data", tmp_path / "x.npy", "--out", ro / "out"], capsys)
            assert code == 2 and "permission denied" in err
        finally:
            ro.chmod(0o700)


def test_api_raises_audit_error(tmp_path, lin):
    with pytest.raises(AuditError, match="data is empty"):
        audit(lin, np.zeros((0, 4)), out=tmp_path / "o", **FAST)
    with pytest.raises(AuditError, match="resume and force"):
        audit(lin, np.zeros((2, 4)), out=tmp_path / "o", resume=True, force=True, **FAST)


# ------------------------------------------------------------------------------ one spectrum per input
def test_one_eigensolve_per_input(monkeypatch, tmp_path):
    """The spectrum of each input is computed once per audit: its eigenvalues are the lambda columns,
    its top pair the direction of OSSA at every epsilon, of the least-perturbation search and of the
    examples in the report. Counted at the spectrum and at the backend (the gram path asks for the
    gradients of all classes once per input; nothing else does)."""
    from fisher_ref.attacks import _directions, _iterative
    from fisher_ref.backends import NormalizedBackend

    class Counting(NormalizedBackend):  # mean 0, std 1: the same numbers, counted
        def _class_gradients(self, x, classes):
            if classes is None:
                all_class_rows.append(x.shape[0])
            return super()._class_gradients(x, classes)

        def _fisher_vector_product(self, x, v):
            fvp_calls.append(x.shape[0])
            return super()._fisher_vector_product(x, v)

    all_class_rows, fvp_calls, spectra, elsewhere = [], [], [], []
    real_backend, real_spectrum = _shards.backend_for, _shards.fisher_spectrum
    monkeypatch.setattr(_shards, "backend_for", lambda spec: Counting(real_backend(spec), 0.0, 1.0))

    def counted(*args, **kw):
        spectra.append(np.asarray(kw["x"]).shape[0])
        return real_spectrum(*args, **kw)

    monkeypatch.setattr(_shards, "fisher_spectrum", counted)
    for module in (_directions, _iterative):  # where the attacks would compute a direction themselves
        monkeypatch.setattr(module, "fisher_spectrum", lambda *a, **kw: elsewhere.append(1) or real_spectrum(*a, **kw))
    res = audit(out=tmp_path / "a", limit=12, shard_size=5, **{**FAST, "k": 3})
    assert res.complete and res.n_shards == 3
    assert spectra == [5, 5, 2] and elsewhere == []
    assert sum(all_class_rows) == 12 and fvp_calls == []  # one eigensolve (a C x C Gram matrix) per input
    x, y = load_bundled_mnist()
    w, _ = fr.fisher_spectrum(x=x[:12], backend=OnnxBackend(bundled_path("mnist_lenet.onnx")), k=3)
    np.testing.assert_array_equal(res.columns["eigenvalues"], w)


# ------------------------------------------------------------------------------ the configuration
def test_config_is_validated_once_and_frozen():
    import dataclasses

    from fisher_ref.audit import AuditConfig, ConfigError

    cfg = AuditConfig(k=3, epsilons=[2, 0.5, 2], mean=[0.5], std=0.25, resize=(8, 8), out="a")
    assert cfg.epsilons == (0.5, 2.0) and cfg.mean == (0.5,) and cfg.std == (0.25,) and cfg.out == Path("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 4
    for kw, option, message in [
        ({"k": 0}, "k", "k must be a positive int, got 0"),
        ({"k": 2.5}, "k", "k must be a positive int, got 2.5"),
        ({"tol": -1}, "tol", "tol must be a positive number, got -1"),
        ({"worker_timeout": 0}, "worker_timeout", "worker_timeout must be a positive number"),
        ({"limit": 0}, "limit", "limit must be None or a positive int, got 0"),
        ({"out": " "}, "out", "out must name a folder"),
        ({"layout": "hwc"}, "layout", "layout must be one of"),
        ({"scheduler": "local:0"}, "scheduler", "local:N with N >= 1"),
        ({"bounds": (1, 0)}, "bounds", "bounds must satisfy lo < hi"),
        ({"resize": (8,)}, "resize", "resize must be"),
        ({"resume": True, "force": True, "out": "a"}, "resume", "resume and force exclude each other"),
        ({"resume": True}, "out", "resume needs the output folder"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            AuditConfig(**kw)
        assert info.value.option == option
    with pytest.raises(TypeError, match="unexpected keyword argument 'kk'"):
        audit(kk=3)


def test_config_object_and_keywords(tmp_path, lin):
    from fisher_ref.audit import AuditConfig

    x = np.random.default_rng(0).random((4, 4))
    cfg = AuditConfig(k=2, epsilons=(1.0,), progress=False, report=False)
    a = audit(lin, x, config=cfg, out=tmp_path / "a")
    b = audit(lin, x, out=tmp_path / "b", k=2, epsilons=(1.0,), progress=False, report=False)
    assert_same_results(a, b)


def test_cli_names_the_flag_of_a_bad_option(tmp_path, capsys):
    code, _, err = run(["audit", "--out", tmp_path / "a", "--shard-size", "0", "--no-progress"], capsys)
    assert code == 2 and err.strip() == "fisher-ref audit: error: --shard-size must be a positive int, got 0"


# ---------------------------------------------------------------------------------------- memory budget
def test_max_memory_lowers_the_batch_says_so_and_changes_no_number(tmp_path, capsys):
    """The bundled LeNet-5 holds about 0.1 MB per row of a derivative run: a 1 MiB budget means 8 rows
    per ONNX Runtime run instead of 64, and the audit's numbers are those of the default run."""
    from fisher_ref.audit._config import parse_memory

    assert parse_memory("2G") == 2 * 2**30 and parse_memory("512MB") == 512 * 2**20 and parse_memory(3 * 2**20) == 3 * 2**20
    assert parse_memory("1.5GiB") == 3 * 2**29 and parse_memory(None) is None
    base = ["audit", "--limit", "12", "--no-report", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--max-memory", "1M"]) == 0
    out = capsys.readouterr().out
    rows = OnnxBackend(bundled_path("mnist_lenet.onnx"), max_memory=2**20).batch_size
    assert 1 <= rows < 64
    assert f"batch: {rows} rows per ONNX Runtime run instead of 64, to stay within --max-memory 1.0 MB" in out
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["config"]["batch_size"] == rows and s["config"]["batch_size_requested"] == 64
    a, b = (np.genfromtxt(tmp_path / d / "results.csv", delimiter=",", names=True) for d in "ab")
    for col in ("lambda_1", "lambda_9", "least_perturbation_ossa", "confidence"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("value, why", [("lots", "must be a size such as 2G, 512M or a number of bytes, got 'lots'"),
                                        ("100", "max-memory must be at least 1M (1048576 bytes), got 100")])
def test_a_bad_max_memory_is_one_line_naming_the_flag(tmp_path, capsys, value, why):
    code = main(["audit", "--limit", "4", "--out", str(tmp_path / "o"), "--max-memory", value, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--max-memory" in err and why in err, err
    assert not (tmp_path / "o").exists()

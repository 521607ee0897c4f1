"""Faults of ``fisher-ref audit`` found by the red-team runs (issues 16 and 17), one test per case.

Each test reproduces its case through the command line (or the API where the case is an API
call) and asserts the fixed behaviour: the audit never touches what it did not write, never uses
a shard it cannot prove, and fails with exit status 2 and one line. Cases that need a real full
disk mount a small tmpfs (root only; skipped otherwise); the Dask crash loops are slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ad")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fisher_ref.__main__ import main  # noqa: E402
from fisher_ref.audit import DataError, audit  # noqa: E402

from _onnx_models import linear_model, linear_weights, two_output_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 12  # inputs of the small case: 4 shards of 3


def cli(argv) -> int:
    """``fisher-ref audit ARGV`` in this process; the exit status."""
    argv = [str(a) for a in argv]
    return main(argv if argv[:1] == ["audit"] else ["audit", *argv])


def run(argv, capsys):
    code = cli(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    """The single error line of a refused run (exit 2, no traceback)."""
    assert code == 2, err
    assert err.startswith("fisher-ref audit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def tree_digest(folder: Path) -> dict:
    """Every entry below ``folder`` (links not followed) with the SHA-256 of each regular file."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# ================ the output folder: only ours touched, only proven shards used, one audit at a time


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 4-feature, 3-class linear ONNX model, 12 inputs with labels, and the reference results.csv."""
    root = tmp_path_factory.mktemp("case")
    W, b = linear_weights(d=4, n_classes=3)
    model = save(linear_model(W * 0.5, b), root / "lin.onnx")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", x=rng.random((N, 4)), y=rng.integers(0, 3, N))
    args = [model, "--data", root / "data.npz", "--k", "2", "--shard-size", "3", "--epsilons", "0.5", "1",
            "--no-report", "--no-progress"]
    ref = root / "ref"
    assert cli([*args, "--out", ref]) == 0
    return {"root": root, "model": model, "args": args, "ref": (ref / "results.csv").read_bytes()}


def _partial(case, out: Path, n_shards: int = 2) -> None:
    """An audit interrupted after ``n_shards`` shards (as by --max-shards)."""
    assert cli([*case["args"], "--out", out, "--max-shards", n_shards]) == 0


def test_16_1_force_never_follows_a_symlink_out_of_the_folder(case, tmp_path, capsys):
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    _partial(case, out)
    shutil.copytree(out / "shards", outside)
    (outside / "shard-keep.txt").write_text("not the audit's")
    shutil.rmtree(out / "shards")
    (out / "shards").symlink_to(outside)
    before = tree_digest(outside)
    err = one_line_error(*run([*case["args"], "--out", out, "--force"], capsys)[::2])
    assert "shards is a symbolic link" in err and "only inside its folder" in err
    assert tree_digest(outside) == before


def test_16_1_a_linked_report_file_is_not_replaced(case, tmp_path, capsys):
    out, target = tmp_path / "out", tmp_path / "mine.csv"
    target.write_text("the user's own table\n")
    out.mkdir()
    (out / "results.csv").symlink_to(target)
    err = one_line_error(*run([*case["args"], "--out", out, "--force-any"], capsys)[::2])
    assert "results.csv is a symbolic link" in err
    assert target.read_text() == "the user's own table\n" and (out / "results.csv").is_symlink()


def test_16_1_force_never_removes_a_listed_name_outside_the_folder(case, tmp_path, capsys):
    """A manifest edited to list paths out of the folder: --force leaves them alone."""
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    _partial(case, out, n_shards=1)
    victim.write_text("the user's")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"].update({"../victim.txt": "0" * 64, str(victim): None})
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run([*case["args"], "--out", out, "--force"], capsys)
    assert code == 0, err
    assert victim.read_text() == "the user's"


def test_16_2_force_refuses_a_folder_that_never_held_an_audit(case, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("results.csv", "report.html", "summary.json", "scatter.png", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    before = tree_digest(out)
    err = one_line_error(*run([*case["args"], "--out", out, "--force"], capsys)[::2])
    assert "holds no audit manifest" in err and "--force-any" in err
    assert tree_digest(out) == before
    code, _, err = run([*case["args"], "--out", out, "--force-any"], capsys)  # the user says so: overwrite
    assert code == 0, err
    assert (out / "results.csv").read_bytes() == case["ref"]
    assert (out / "notes.txt").read_text() == "the user's notes.txt"  # not an audit's name: kept


def test_16_2_force_removes_only_what_the_manifest_lists(case, tmp_path, capsys):
    out = tmp_path / "out"
    _partial(case, out, n_shards=4)
    (out / "shards" / "shard-09999.csv").write_text("not written by the audit")
    (out / "results.csv.bak").write_text("a user's backup")
    code, _, err = run([*case["args"], "--out", out, "--force", "--max-shards", "1"], capsys)
    assert code == 0, err
    assert (out / "shards" / "shard-09999.csv").read_text() == "not written by the audit"
    assert (out / "results.csv.bak").read_text() == "a user's backup"
    assert not (out / "results.csv").exists()  # the previous audit's, listed: removed
    assert sorted(p.name for p in (out / "shards").glob("shard-0000*")) == ["shard-00000.csv", "shard-00000.npz"]


@pytest.mark.parametrize("value", ["", "   "])
def test_16_3_empty_out_is_refused(case, tmp_path, capsys, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.csv").write_text("the user's results\n")
    before = tree_digest(tmp_path)
    err = one_line_error(*run([*case["args"], "--out", value, "--force"], capsys)[::2])
    assert "--out must name a folder" in err
    assert tree_digest(tmp_path) == before


def _rewrite_npz(path: Path, **changes) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update({k: fn(arrays[k]) for k, fn in changes.items()})
    np.savez(path, **arrays)


def test_16_4_resume_recomputes_rewritten_and_swapped_shards(case, tmp_path, capsys):
    out = tmp_path / "out"
    _partial(case, out, n_shards=3)
    s = out / "shards"
    _rewrite_npz(s / "shard-00000.npz", eigenvalues=lambda w: w * 1000)  # valid, but not what was computed
    for ext in (".csv", ".npz"):  # two shards swapped
        (s / f"shard-00001{ext}").rename(s / "tmp")
        (s / f"shard-00002{ext}").rename(s / f"shard-00001{ext}")
        (s / "tmp").rename(s / f"shard-00002{ext}")
    code, stdout, err = run([*case["args"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    for i in (0, 1, 2):
        assert f"shard {i} (inputs {3 * i}-{3 * i + 2}) cannot be used" in stdout
    assert "shard-00000.npz does not match its SHA-256 in the manifest; recomputing it" in stdout
    assert (out / "results.csv").read_bytes() == case["ref"]


def test_16_5_missing_manifest_with_shards_is_not_resumable(case, tmp_path, capsys):
    out = tmp_path / "out"
    _partial(case, out, n_shards=1)
    for manifest in out.rglob("manifest.json"):
        manifest.unlink()
    before = tree_digest(out)
    argv = [a if a != "2" else "1" for a in case["args"]]  # other options (k = 1)
    err = one_line_error(*run([*argv, "--out", out, "--resume"], capsys)[::2])
    assert "no manifest.json" in err and "not resumable" in err and "--force-any" in err
    assert tree_digest(out) == before


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _lock(out: Path, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / ".fisher-ref-audit.lock").write_text(json.dumps({"pid": pid, "host": os.uname().nodename,
                                                            "since": "2026-12-01T00:00:00"}))


def test_17_2_a_folder_in_use_by_another_audit_is_refused(case, tmp_path, capsys):
    out = tmp_path / "out"
    _lock(out, os.getpid())  # a live process holds it
    err = one_line_error(*run([*case["args"], "--out", out], capsys)[::2])
    assert f"is in use by another audit (process {os.getpid()}" in err
    assert sorted(p.name for p in out.iterdir()) == [".fisher-ref-audit.lock"]


def test_17_2_a_stale_lock_is_reported_and_broken_on_request(case, tmp_path, capsys):
    out = tmp_path / "out"
    _partial(case, out, n_shards=1)
    pid = _dead_pid()
    _lock(out, pid)
    err = one_line_error(*run([*case["args"], "--out", out, "--resume"], capsys)[::2])
    assert f"stale lock of process {pid}, which is no longer running" in err and "--break-lock" in err
    assert "break_lock=True" not in err  # the CLI speaks in flags, not keywords
    code, stdout, err = run([*case["args"], "--out", out, "--resume", "--break-lock"], capsys)
    assert code == 0, err
    assert f"removed the stale lock of process {pid}" in stdout
    assert (out / "results.csv").read_bytes() == case["ref"]
    assert not (out / ".fisher-ref-audit.lock").exists()


def test_17_2_a_lock_its_owner_never_filled_in(case, tmp_path, capsys):
    """Killed between creating the lock and writing its PID: reported, removed on request."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".fisher-ref-audit.lock").write_text("")
    err = one_line_error(*run([*case["args"], "--out", out], capsys)[::2])
    assert "holds an unreadable lock file .fisher-ref-audit.lock" in err and "--break-lock" in err
    code, stdout, err = run([*case["args"], "--out", out, "--break-lock"], capsys)
    assert code == 0, err
    assert "removed an unreadable lock file" in stdout and (out / "results.csv").read_bytes() == case["ref"]


def test_17_2_another_process_probe_file_is_harmless(case, tmp_path, capsys):
    out = tmp_path / "out"
    _partial(case, out, n_shards=1)
    (out / "shards" / ".fisher-ref-write-test").mkdir()  # what another audit's probe could leave
    code, _, err = run([*case["args"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert (out / "results.csv").read_bytes() == case["ref"]


@pytest.mark.slow
def test_17_2_two_audits_started_at_once_into_one_folder(case, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fisher_ref", "audit", *map(str, case["args"]), "--out", str(out)]
    procs = [subprocess.Popen([a if a != "2" or k == 0 else "1" for a in cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path) for k in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    loser = next(e for c, e in results if c == 2)
    assert "in use by another audit" in loser or "already exists" in loser, loser
    winner = results.index(next(r for r in results if r[0] == 0))
    k = 2 if winner == 0 else 1
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.count("lambda_") == k
    code = subprocess.run([*([a if a != "2" or winner == 0 else "1" for a in cmd]), "--resume"], cwd=tmp_path,
                          capture_output=True, text=True).returncode
    assert code == 0
    if winner == 0:
        assert (out / "results.csv").read_bytes() == case["ref"]


# ================ data and model: exit 2 and one line, or the fix


@pytest.mark.parametrize("make, hint", [
    (lambda x: np.round(x * 255).astype(np.int64), "pass --scale 255"),
    (lambda x: x * 10 - 5, "--bounds LO HI"),
])
def test_16_6_data_outside_the_unit_range_is_refused(case, tmp_path, capsys, make, hint):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", make(rng.random((6, 4))))
    err = one_line_error(*run([case["model"], "--data", tmp_path / "x.npy", "--out", tmp_path / "o", "--no-report",
                              "--no-progress"], capsys)[::2])
    assert "outside [0, 1]" in err and "--scale" in err and "--bounds" in err and hint in err
    assert not (tmp_path / "o").exists()
    code, _, err = run([case["model"], "--data", tmp_path / "x.npy", "--out", tmp_path / "o", "--no-report",
                        "--no-progress", "--no-clip", "--k", "2"], capsys)  # declared: audited unclipped
    assert code == 0, err


def test_16_7_k_is_clamped_to_the_dimension_and_the_rank_bound(case, tmp_path, capsys):
    import fisher_ref as fr
    from fisher_ref.backends import OnnxBackend

    argv = [case["model"], "--data", case["root"] / "data.npz", "--no-report", "--no-progress", "--shard-size", "6"]
    for k in ([], ["--k", "785"]):  # the default k = 10 and a k far above d = 4 on a 3-class model
        out = tmp_path / f"out{len(k)}"
        code, stdout, err = run([*argv, *k, "--out", out], capsys)
        assert code == 0, err
        assert "a 3-class model's Fisher matrix has rank <= 2" in stdout and "using k = 2" in stdout
        header = (out / "results.csv").read_text().splitlines()[0].split(",")
        assert [c for c in header if c.startswith("lambda_")] == ["lambda_1", "lambda_2"]
        assert json.loads((out / "summary.json").read_text())["config"]["k"] == 2
    with np.load(case["root"] / "data.npz") as f:
        x = f["x"]
    w, _ = fr.fisher_spectrum(x=x, backend=OnnxBackend(case["model"]), k=2)
    res = audit(case["model"], case["root"] / "data.npz", out=tmp_path / "api", report=False, progress=False)
    np.testing.assert_array_equal(res.columns["eigenvalues"], w)


def test_16_7_k_is_clamped_to_the_input_dimension(tmp_path, capsys):
    W, b = linear_weights(d=2, n_classes=5)
    model = save(linear_model(W, b), tmp_path / "d2.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).random((4, 2)))
    code, stdout, err = run([model, "--data", tmp_path / "x.npy", "--out", tmp_path / "o", "--no-report",
                             "--no-progress"], capsys)
    assert code == 0, err
    assert "the input dimension is 2" in stdout and "using k = 2" in stdout


def test_16_8_truncated_npz(case, tmp_path, capsys):
    raw = (case["root"] / "data.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    err = one_line_error(*run([case["model"], "--data", tmp_path / "cut.npz", "--out", tmp_path / "o"], capsys)[::2])
    assert f"data: cannot read {str(tmp_path / 'cut.npz')!r} as npz (BadZipFile" in err


def _reciprocal_model(W, b) -> onnx.ModelProto:
    """``Gemm(1 / x)``: finite wherever x is nonzero, Inf (and then NaN probabilities) at x = 0."""
    nodes = [helper.make_node("Reciprocal", ["x"], ["r"]), helper.make_node("Gemm", ["r", "W", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "reciprocal", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(W.astype(np.float32), "W"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model


def test_17_4_nan_produced_inside_the_model_names_the_input(tmp_path, capsys):
    W, b = linear_weights(d=4, n_classes=3)
    model = save(_reciprocal_model(W * 0.05, b), tmp_path / "recip.onnx")
    x = 0.5 + 0.5 * np.random.default_rng(3).random((6, 4))
    x[4, 2] = 0.0  # finite data, on which the model divides by zero
    np.save(tmp_path / "x.npy", x)
    err = one_line_error(*run([model, "--data", tmp_path / "x.npy", "--out", tmp_path / "o", "--no-report",
                              "--no-progress", "--k", "2", "--no-clip"], capsys)[::2])
    assert f"model {model}: it produced values the library refuses at input 4, whose data is finite" in err
    assert "(so the model, not the data, made them)" in err and "NaN" in err


def test_17_4_nan_at_a_perturbed_input_names_the_input_too(tmp_path, capsys):
    """The data is fine, the model is finite there; the attacks clip to [0, 1] and reach x = 0."""
    W, b = linear_weights(d=4, n_classes=3)
    model = save(_reciprocal_model(W * 0.05, b), tmp_path / "recip.onnx")
    np.save(tmp_path / "x.npy", 0.05 + 0.05 * np.random.default_rng(3).random((6, 4)))  # close to 0
    err = one_line_error(*run([model, "--data", tmp_path / "x.npy", "--out", tmp_path / "o", "--no-report",
                              "--no-progress", "--k", "2"], capsys)[::2])
    assert f"model {model}: it produced values the library refuses at input " in err and "NaN" in err


def test_17_4_npy_header_claiming_an_impossible_shape(case, tmp_path, capsys):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (10**8, 3, 1024, 1024)})
        f.write(b"\0" * 64)
    err = one_line_error(*run([case["model"], "--data", path, "--out", tmp_path / "o"], capsys)[::2])
    assert "its header claims shape (100000000, 3, 1024, 1024) of float64 (2.24 PiB), but the file holds 64 B" in err


def test_17_4_ragged_data_is_refused(case, tmp_path):
    with pytest.raises(DataError, match="data must be an array of shape .* got a ragged sequence"):
        audit(case["model"], [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6]], out=tmp_path / "o", report=False, progress=False)
    assert not (tmp_path / "o").exists()


def test_17_5_output_name_chooses_among_several_outputs(tmp_path, capsys):
    model = save(two_output_model(), tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(4).random((5, 4)))
    base = [model, "--data", tmp_path / "x.npy", "--no-report", "--no-progress"]
    err = one_line_error(*run([*base, "--out", tmp_path / "a"], capsys)[::2])
    assert "has 2 graph outputs ['logits', 'probs']; pass --output-name to choose the class scores" in err
    assert "output_name=" not in err and "pass output_name" not in err
    code, _, err = run([*base, "--out", tmp_path / "b", "--output-name", "probs"], capsys)
    assert code == 0, err
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["model"]["output_name"] == "probs" and s["model"]["output_kind"] == "probabilities"
    err = one_line_error(*run([*base, "--out", tmp_path / "c", "--output-name", "nope"], capsys)[::2])
    assert "--output-name 'nope' is not a graph output of the model" in err


# ================ a full disk, kill -9: whole files or none, and --resume finishes


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 8 MiB mounted in tmp_path: a disk that really fills up (needs root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Leave about ``leave`` bytes free on ``disk``; returns the filler file."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def _no_temporaries(out: Path) -> bool:
    return not [p for p in out.rglob("*") if ".fisher-ref-tmp-" in p.name]


def test_16_8_full_disk_while_writing_shards(case, small_disk, capsys):
    out = small_disk / "out"
    _partial(case, out, n_shards=1)
    filler = _fill(small_disk, 4096)
    err = one_line_error(*run([*case["args"], "--out", out, "--resume"], capsys)[::2])
    assert "no space left on device writing" in err and "free space and rerun with --resume" in err
    assert _no_temporaries(out)
    filler.unlink()
    code, _, err = run([*case["args"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert (out / "results.csv").read_bytes() == case["ref"]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The bundled LeNet on 8 inputs with its report: the sizes of what it writes."""
    out = tmp_path_factory.mktemp("bundled") / "a"
    argv = ["audit", "--limit", "8", "--k", "2", "--shard-size", "4", "--epsilons", "1", "--no-progress"]
    assert cli([*argv, "--out", out]) == 0
    return {"argv": argv, "out": out}


def test_17_3_full_disk_while_writing_the_report_leaves_no_half_file(bundled, small_disk, capsys):
    ref = bundled["out"]
    out = small_disk / "out"
    assert cli([*bundled["argv"], "--out", out, "--no-report"]) == 0  # every shard; the report comes next
    pngs = sum(p.stat().st_size for p in ref.glob("*.png"))
    html_size = (ref / "report.html").stat().st_size
    filler = _fill(small_disk, pngs + 96 * 1024)  # room for the plots, not for report.html
    assert html_size > 2 * 96 * 1024
    err = one_line_error(*run([*bundled["argv"], "--out", out, "--resume"], capsys)[::2])
    assert "no space left on device writing" in err and "report.html" in err
    assert not (out / "report.html").exists() and _no_temporaries(out)
    filler.unlink()
    code, _, err = run([*bundled["argv"], "--out", out, "--resume"], capsys)
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert page.endswith("</html>\n") and abs(len(page) - html_size) < 2000
    assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 1.5, 3.0, 4.5, 6.0])
def test_kill_9_then_resume_gives_the_same_results(bundled, tmp_path, delay):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fisher_ref", *bundled["argv"], "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*cmd, "--resume", "--break-lock"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "results.csv").read_bytes() == (bundled["out"] / "results.csv").read_bytes()
    assert (out / "report.html").read_text().endswith("</html>\n")


# ================ Dask: crash loops and a cluster with no live worker


def _worker_processes(parent: int) -> list:
    import psutil

    try:
        kids = psutil.Process(parent).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if "spawn_main" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _killer(parent: int, stop: threading.Event, armed: threading.Event, after: float, kills: list) -> None:
    """Once ``armed``, kill each Dask worker process of ``parent`` when it has lived ``after`` seconds."""
    import psutil

    armed.wait()
    while not stop.is_set():
        for p in _worker_processes(parent):
            try:
                if time.time() - p.create_time() >= after:
                    p.kill()
                    kills.append(p.pid)
            except psutil.Error:
                pass
        stop.wait(0.05)


#: Two shards of 20 bundled inputs: a few seconds of work each, longer than a worker lives under fire.
DASK_ARGV = ["audit", "--limit", "40", "--k", "2", "--shard-size", "20", "--epsilons", "1", "--no-progress",
             "--no-report"]


def _dask_audit_under_fire(tmp_path, after: float, extra: list, timeout: float):
    """Run a ``local:2`` Dask audit; from the moment its cluster is up, kill every worker that lived ``after`` s."""
    pytest.importorskip("distributed")
    pytest.importorskip("psutil")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fisher_ref", *DASK_ARGV, "--out", str(out), "--scheduler", "local:2", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    stop, armed, kills, lines, errors = threading.Event(), threading.Event(), [], [], []

    def read_stdout():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("dask: LocalCluster of 2 worker processes"):
                armed.set()
        armed.set()

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
    for t in readers:
        t.start()
    threading.Thread(target=_killer, args=(proc.pid, stop, armed, after, kills), daemon=True).start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the audit hung for {timeout} s (workers killed {len(kills)} times)")
    finally:
        stop.set()
    for t in readers:
        t.join(timeout=10)
    stderr = "".join(errors)
    return proc.returncode, "".join(lines), stderr, kills, out


@pytest.mark.slow
def test_16_9_dask_worker_crash_loop_stops_with_one_line(tmp_path):
    """Every worker is killed after 2.5 s, before it can finish a shard: bounded retries, then one line."""
    code, stdout, stderr, kills, out = _dask_audit_under_fire(tmp_path, 2.5, [], timeout=300)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fisher-ref audit: error: dask: stopped at shard "), stderr
    assert "died 4 times (allowed-failures = 3)" in lines[0] or "no Dask worker has been alive" in lines[0]
    assert "Traceback" not in stderr and "KeyError" not in stderr and "resource_tracker" not in stderr
    assert "Couldn't gather keys" not in stderr + stdout
    assert json.loads((out / "manifest.json").read_text())["shards"] == {}  # nothing half done is recorded


@pytest.mark.slow
def test_17_1_no_live_worker_stops_after_the_watchdog_timeout(tmp_path):
    """Workers die as soon as they start (none ever registers): the watchdog stops within its timeout."""
    t0 = time.monotonic()
    code, stdout, stderr, kills, out = _dask_audit_under_fire(tmp_path, 0.0, ["--worker-timeout", "8"], timeout=180)
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and "no Dask worker has been alive for 8 s (--worker-timeout)" in stderr, stderr
    assert "stopped at shard 0 (inputs 0-19)" in stderr and "--resume" in stderr
    assert time.monotonic() - t0 < 150
    assert cli([*DASK_ARGV, "--out", out, "--resume"]) == 0  # without Dask: the results of a plain run
    assert cli([*DASK_ARGV, "--out", tmp_path / "ref"]) == 0
    assert (out / "results.csv").read_bytes() == (tmp_path / "ref" / "results.csv").read_bytes()

"""evaluate_detection (paper Tables 4 and 5): the data, the split by input, the tables and the ROC figure."""

import math

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GroupShuffleSplit  # noqa: E402

import fisher_ref as fr  # noqa: E402
from _detection_problems import gaussian_problem  # noqa: E402
from fisher_ref import MissingCapabilityError  # noqa: E402
from fisher_ref.backends import LogisticRegressionModel  # noqa: E402
from fisher_ref.detection import AUCTable, FisherDetector, KernelDensityDetector, evaluate_detection  # noqa: E402


def test_evaluate_detection_tables_split_by_input_and_png(tmp_path):
    model, X, y = gaussian_problem(3, n=90, d=6, seed=2)
    X = (X - X.min()) / (X.max() - X.min())  # into [0, 1]
    attacks = ("fgm", "otcm", "opt", "bim", "ossa")
    png = tmp_path / "roc.png"
    rep = evaluate_detection(X, model, y, attacks=attacks, epsilon={"fgm": 0.3, "otcm": 0.3, "bim": 0.3, "ossa": 0.3},
                             attack_options={"opt": {"max_iter": 30, "binary_search_steps": 3}},
                             X_train=X, y_train=y, roc_png=png, progress=False, random_state=0)
    names = ["KD", "BU", "KD+BU", "LID", "Fisher"]
    assert rep.auc.rows == names and rep.auc.columns == list(attacks) and rep.auc.shape == (5, 5)
    assert rep.cross.shape == (5, 5) and rep.cross_detector == "Fisher"
    finite = np.isfinite(rep.auc.values)
    assert finite.mean() > 0.8 and np.all((rep.auc.values[finite] >= 0) & (rep.auc.values[finite] <= 1))
    np.testing.assert_allclose(np.diag(rep.cross.values), rep.auc.values[-1])  # diagonal = Fisher row
    # the split is by input: no input on both sides, for any attack
    assert not set(rep.train_inputs) & set(rep.test_inputs)
    for a in attacks:
        tr, te = rep.groups[a]["train"], rep.groups[a]["test"]
        assert not set(tr) & set(te)
        assert set(tr) <= set(rep.train_inputs) and set(te) <= set(rep.test_inputs)
        ns = rep.n_samples[a]
        # every fooled input gives one clean and one noisy negative and one adversarial positive
        assert ns["train_negative"] == 2 * ns["train_positive"] and ns["test_negative"] == 2 * ns["test_positive"]
        assert tr.size == ns["train_negative"] + ns["train_positive"]
    assert math.isnan(rep.epsilon["opt"]) and rep.epsilon["fgm"] == 0.3
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and rep.roc_png == str(png)
    md = rep.auc.to_markdown()
    assert md.splitlines()[0] == "| detector | fgm | otcm | opt | bim | ossa |" and len(md.splitlines()) == 7
    csv = rep.auc.to_csv(tmp_path / "auc.csv")
    assert (tmp_path / "auc.csv").read_text() == csv and csv.splitlines()[0] == "detector,fgm,otcm,opt,bim,ossa"
    assert rep.auc["Fisher", "fgm"] == rep.auc.to_dict()["Fisher"]["fgm"]


def test_evaluate_detection_defaults_and_errors():
    model = LogisticRegressionModel.random((5,), 3, scale=3.0, rng=0)  # no features, no dropout
    X = np.random.default_rng(0).uniform(0, 1, (60, 5))
    y = model.probabilities(X).argmax(1)
    rep = evaluate_detection(X, model, y, attacks=["fgm", "ossa"], progress=True, noise=None,
                             detectors=None, random_state=1)
    assert rep.auc.rows == ["Fisher"] and set(rep.skipped) == {"KD", "BU", "KD+BU", "LID"}
    # default budget: FGM fools about 90% of the inputs
    assert 0.8 <= rep.fooling_rate["fgm"] <= 1.0 and rep.epsilon["fgm"] == rep.epsilon["ossa"] > 0
    assert rep.n_samples["fgm"]["train_negative"] == rep.n_samples["fgm"]["train_positive"]  # no noisy copies
    # any scikit-learn classifier runs on the flattened raw inputs; attacks may be callables
    rep = evaluate_detection(X, model, y, attacks={"fgm": "fgm", "my_fgm": fr.fgm}, epsilon=0.5, progress=False,
                             detectors={"raw": LogisticRegression(), "F": FisherDetector(model, random_state=0)})
    assert rep.auc.rows == ["raw", "F"] and rep.cross_detector == "F" and rep.cross.shape == (2, 2)
    assert rep.fooling_rate["fgm"] == rep.fooling_rate["my_fgm"] and rep.n_samples["fgm"] == rep.n_samples["my_fgm"]
    assert np.all(np.isfinite(rep.auc.values))
    with pytest.raises(ValueError, match="attacks must be"):
        evaluate_detection(X, model, y, attacks=["deepfool"], progress=False)
    with pytest.raises(ValueError, match="epsilon has entries for attacks not run"):
        evaluate_detection(X, model, y, attacks=["fgm"], epsilon={"bim": 1.0}, progress=False)
    with pytest.raises(ValueError, match="test_size"):
        evaluate_detection(X, model, y, attacks=["fgm"], test_size=1.5, progress=False)
    with pytest.raises(ValueError, match="noise"):
        evaluate_detection(X, model, y, attacks=["fgm"], noise="uniform", progress=False)
    with pytest.raises(ValueError, match="y_clean"):
        evaluate_detection(X, model, y[:10], attacks=["fgm"], progress=False)
    with pytest.raises(ValueError, match="fooled none"):
        evaluate_detection(X, model, y, attacks=["fgm"], epsilon=1e-9, progress=False)
    with pytest.raises(MissingCapabilityError):
        evaluate_detection(X, model, y, attacks=["fgm"], detectors={"KD": KernelDensityDetector(model)},
                           progress=False)


def test_auc_table_formats():
    t = AUCTable(["A", "B"], ["fgm", "opt"], [[0.5, 0.987654], [np.nan, 1.0]])
    assert t.to_markdown().splitlines()[2] == "| A | 50.00 | 98.77 |"
    assert "n/a" in t.to_markdown()
    assert t.to_csv().splitlines()[2] == "B,,1.0"
    assert t["A"] == {"fgm": 0.5, "opt": 0.987654}
    with pytest.raises(ValueError, match="values has shape"):
        AUCTable(["A"], ["x", "y"], [[1.0]])


def lr_problem():
    model = LogisticRegressionModel.random((5,), 3, scale=3.0, rng=0)
    X = np.random.default_rng(0).uniform(0, 1, (60, 5))
    return model, X, model.probabilities(X).argmax(1)


@pytest.mark.parametrize("seed, test_size", [(0, None), (7, 0.5)])
def test_the_default_split_is_the_shuffle_split_of_earlier_releases(seed, test_size):
    """The published numbers rest on this split: the correctly classified inputs permuted by
    default_rng(random_state), round(test_size * n) of them held out, drawn before the attacks."""
    model, X, y = lr_problem()
    y[:5] = (y[:5] + 1) % 3  # five inputs misclassified: not in the split
    rep = evaluate_detection(X, model, y, attacks=["fgm"], epsilon=0.5, detectors={"F": FisherDetector(model)},
                             test_size=test_size, random_state=seed, progress=False, noise=None)
    correct = np.flatnonzero(model.probabilities(X).argmax(1) == y)
    assert correct.size == 55
    perm = np.random.default_rng(seed).permutation(correct)
    n_test = round((test_size or 0.3) * correct.size)
    np.testing.assert_array_equal(rep.test_inputs, np.sort(perm[:n_test]))
    np.testing.assert_array_equal(rep.train_inputs, np.sort(perm[n_test:]))


def test_evaluate_detection_with_a_group_shuffle_split():
    model, X, y = lr_problem()
    det = {"F": FisherDetector(model, random_state=0)}
    gss = GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=4)
    rep = evaluate_detection(X, model, y, attacks=["fgm", "ossa"], epsilon=0.5, detectors=det, splitter=gss,
                             random_state=1, progress=False)
    correct = np.flatnonzero(model.probabilities(X).argmax(1) == y)
    train, test = next(gss.split(X[correct], y[correct], groups=correct))
    np.testing.assert_array_equal(rep.test_inputs, np.sort(correct[test]))
    np.testing.assert_array_equal(rep.train_inputs, np.sort(correct[train]))
    assert rep.test_inputs.size == math.ceil(0.3 * correct.size)  # GroupShuffleSplit rounds up
    for a in ("fgm", "ossa"):
        assert set(rep.groups[a]["test"]) <= set(rep.test_inputs) and set(rep.groups[a]["train"]) <= set(rep.train_inputs)
    assert np.all(np.isfinite(rep.auc.values)) and rep.cross.shape == (2, 2)
    with pytest.raises(ValueError, match="test_size is the default split's"):
        evaluate_detection(X, model, y, attacks=["fgm"], splitter=gss, test_size=0.3, progress=False)
    with pytest.raises(ValueError, match=r"splitter must put each of the 60 correctly classified inputs on one side, "
                                         r"both sides non-empty; got 30 train and 12 test inputs, 0 on both sides, "
                                         r"18 on neither"):
        evaluate_detection(X, model, y, attacks=["fgm"], progress=False,
                           splitter=GroupShuffleSplit(n_splits=1, test_size=0.2, train_size=0.5, random_state=0))
    with pytest.raises(TypeError, match="splitter must be a scikit-learn splitter"):
        evaluate_detection(X, model, y, attacks=["fgm"], splitter=0.3, progress=False)


def test_bad_detectors_are_refused_before_the_attacks_run():
    model, X, y = lr_problem()
    calls = []

    def counting_fgm(X, backend, **kw):
        calls.append(1)
        return fr.fgm(X, backend, **kw)

    with pytest.raises(ValueError, match="detectors must be a non-empty mapping"):
        evaluate_detection(X, model, y, attacks={"fgm": counting_fgm}, epsilon=0.5, detectors={}, progress=False)
    with pytest.raises(TypeError, match="detector 'x' must be a detector of fisher_ref or a scikit-learn classifier, "
                                        "got str"):
        evaluate_detection(X, model, y, attacks={"fgm": counting_fgm}, epsilon=0.5, detectors={"x": "svm"},
                           progress=False)
    with pytest.raises(TypeError, match=r"epsilon\['fgm'\] must be a positive number, got 'big'"):
        evaluate_detection(X, model, y, attacks={"fgm": counting_fgm}, epsilon="big", progress=False,
                           detectors={"F": FisherDetector(model)})
    assert calls == []

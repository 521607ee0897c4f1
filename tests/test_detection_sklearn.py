"""scikit-learn's estimator checks on the Fisher detector (a Detector) and its feature map."""

import pytest

pytest.importorskip("sklearn")

from fisher_ref.backends import MLPModel  # noqa: E402
from fisher_ref.detection import Detector, FisherDetector, FisherSpectrumFeatures  # noqa: E402


#: The width (number of features) of the X each check fits on, in scikit-learn 1.9; checks not
#: listed raise before the width matters (or fit nothing) and run against the width-3 model. The
#: estimators read X through a model of fixed input width, so each check runs against a model of
#: its own width (against another, it would fail on the width, having tested nothing else).
CHECK_WIDTHS = {
    1: ["check_fit2d_1feature"],
    2: ["check_classifier_data_not_an_array", "check_classifiers_classes", "check_classifiers_train",
        "check_decision_proba_consistency", "check_estimators_fit_returns_self", "check_estimators_overwrite_params",
        "check_fit_check_is_fitted", "check_fit_idempotent", "check_n_features_in", "check_readonly_memmap_input"],
    3: ["check_dict_unchanged", "check_dont_overwrite_parameters", "check_estimators_nan_inf",
        "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
        "check_fit_score_takes_y", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
        "check_pipeline_consistency", "check_supervised_y_2d", "check_transformer_data_not_an_array",
        "check_transformer_general", "check_transformer_preserve_dtypes"],
    4: ["check_n_features_in_after_fitting", "check_positive_only_tag_during_fit"],
    5: ["check_estimators_dtypes"],
    10: ["check_dtype_object", "check_fit2d_1sample"],
}
#: The detector validates y first: with one sample it raises the "one class" error sklearn expects
#: before X's width matters.
WIDTH_FREE_FOR_DETECTOR = {"check_fit2d_1sample"}
DEFAULT_WIDTH = 3


#: The estimators checked, by the name of their test ids.
ESTIMATORS = {"FisherDetector": lambda m: FisherDetector(m, random_state=0),
              "FisherSpectrumFeatures": lambda m: FisherSpectrumFeatures(m, k=3)}


def check_name(check):
    return getattr(check, "func", check).__name__


def check_width(est, name):
    if isinstance(est, Detector) and name in WIDTH_FREE_FOR_DETECTOR:
        return DEFAULT_WIDTH
    return next((w for w, names in CHECK_WIDTHS.items() if name in names), DEFAULT_WIDTH)


def expected_failed_checks(est):
    """The checks that cannot pass whatever the model's width, and why."""
    return {"check_estimators_overwrite_params": (
        "compares joblib.hash(deepcopy(params)) with the params after fit; the hash of the backend's "
        "`capabilities` frozenset follows its iteration order, which a deep copy may change although fit "
        "does not touch the backend (flaky: depends on PYTHONHASHSEED)")}


def estimator_check_params():
    from sklearn.utils.estimator_checks import estimator_checks_generator

    params = []
    for label, make in ESTIMATORS.items():
        for width in CHECK_WIDTHS:
            est = make(MLPModel.random((width,), 3, (8,), scale=2.0, rng=0))
            for item in estimator_checks_generator(est, expected_failed_checks=expected_failed_checks(est),
                                                   mark="xfail"):
                values, marks = (item.values, item.marks) if hasattr(item, "values") else (item, ())
                name = check_name(values[1])
                if check_width(est, name) != width:
                    continue
                kw = "".join(f"-{k}={v}" for k, v in getattr(values[1], "keywords", {}).items())
                params.append(pytest.param(*values, marks=marks, id=f"{label}-d{width}-{name}{kw}"))
    return params


@pytest.mark.parametrize("estimator, check", estimator_check_params())
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_every_sklearn_check_runs_once_per_estimator():
    ids = [p.id for p in estimator_check_params()]
    for cls in ("FisherDetector", "FisherSpectrumFeatures"):
        names = [i.split("-", 2)[2] for i in ids if i.startswith(cls + "-")]
        assert len(names) == len(set(names)) > 40
        ran = {n.split("-")[0] for n in names}
        assert {"check_fit2d_1feature", "check_estimators_dtypes", "check_n_features_in_after_fitting"} <= ran
        assert ("check_classifiers_train" in ran) == (cls == "FisherDetector")

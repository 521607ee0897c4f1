"""The validation scripts run, pass, and their checks can fail."""

import json

import pytest

from fisher_ref.validation import alias_monte_carlo, run_all


def test_alias_monte_carlo_small():
    records = alias_monte_carlo.run(replicates=100, verbose=False)
    alias_monte_carlo.check(records)
    assert {r["draws"] for r in records if r["n_classes"] == 100} == {20, 100, 500, 2500}
    bad = dict(records[-1], max_abs_z_GV=9.0, tail_draws=1e6)
    with pytest.raises(AssertionError, match="G_hat V biased"):
        alias_monte_carlo.check([bad])


def test_kl_finite_differences():
    pytest.importorskip("torch")
    from fisher_ref.validation import kl_finite_differences as kl

    records = kl.run(n_random=1, verbose=False)
    kl.check(records)
    with pytest.raises(AssertionError, match="second difference of the KL off"):
        kl.check([dict(records[0], best_rel_error=1e-3)])


def test_validate_command_writes_records(tmp_path, capsys):
    assert run_all.main(["--out", str(tmp_path), "--only", "golden"]) == 0
    rec = json.loads((tmp_path / "golden.json").read_text())
    assert rec["status"] == "ok" and len(rec["records"]) >= 4
    assert "golden" in capsys.readouterr().out

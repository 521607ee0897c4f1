"""The peak-memory measurements (fisher_ref.validation.memory) that the zoo, the audit benchmark
and the memory tests rely on: a command's own peak, not its parent's; this process's peak reset."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fisher_ref.validation import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux /proc")


def test_the_audit_peak_is_the_commands_own_not_its_parents(tmp_path):
    """A command started from this (large) process reports its own peak resident memory, not a
    copy of the parent's size from before exec; and a command that holds 320 MB reports them."""
    ballast = np.ones(60_000_000)  # 480 MB resident in the parent
    code, seconds, small = memory.run_measured([sys.executable, "-c", "pass"], tmp_path / "small.log")
    assert code == 0 and seconds > 0 and small < 200 * 2**20, small / 2**20
    code, _, large = memory.run_measured(
        [sys.executable, "-c", "import numpy as np; a = np.ones(40_000_000); a += 1"], tmp_path / "large.log")
    assert code == 0 and 320e6 <= large < 480e6 + 150 * 2**20, large / 2**20
    code, _, _ = memory.run_measured([sys.executable, "-c", "import sys; print('no'); sys.exit(3)"], tmp_path / "f.log")
    assert code == 3 and (tmp_path / "f.log").read_text().strip() == "no"
    del ballast


def test_the_peak_of_one_call_is_measured_after_a_reset():
    """After reset_peak, VmHWM forgets an earlier 400 MB peak and then sees a new 160 MB one."""
    try:
        memory.reset_peak()
    except OSError:
        pytest.skip("needs /proc/self/clear_refs")
    a = np.ones(50_000_000)  # 400 MB
    del a
    before = memory.resident_kb("VmHWM")
    memory.reset_peak()
    base = memory.resident_kb("VmRSS")
    assert memory.resident_kb("VmHWM") < before - 300 * 1024
    b = np.ones(20_000_000)  # 160 MB
    extra_mb = (memory.resident_kb("VmHWM") - base) / 1024
    del b
    assert 150 <= extra_mb < 200, extra_mb


def test_a_field_that_is_not_in_proc_status_is_named():
    with pytest.raises(ValueError, match="field must be a memory line of /proc/self/status.*'VmPeakk'"):
        memory.resident_kb("VmPeakk")

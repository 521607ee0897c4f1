"""Progress: a bar on a terminal, one plain line per step elsewhere."""

import io

from fisher_ref._progress import progress


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_step_and_no_carriage_returns():
    out = io.StringIO()
    assert list(progress(range(3), desc="shards", stream=out)) == [0, 1, 2]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0].startswith("shards: 1/3 (33%)") and lines[-1].startswith("shards: 3/3 (100%)")


def test_a_resumed_job_counts_what_was_done():
    out = io.StringIO()
    list(progress(range(2), desc="shards", stream=out, initial=3, total=5))
    assert out.getvalue().splitlines()[0].startswith("shards: 4/5 (80%)")


def test_disabled_progress_prints_nothing_and_a_terminal_gets_a_bar():
    out = io.StringIO()
    assert list(progress(iter([1, 2]), desc="x", enabled=False, stream=out)) == [1, 2]
    assert out.getvalue() == ""
    tty = FakeTTY()
    assert list(progress(range(4), desc="bar", stream=tty)) == [0, 1, 2, 3]
    text = tty.getvalue()
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert text.count("\n") == 4
    else:
        assert "\r" in text  # tqdm's bar redraws in place

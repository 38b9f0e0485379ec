"""The fast subset of the standing fault suite (``scripts/fault_suite.py --fast``), one test per case:
each runs one gpunet command on a damaged input or under a fault, in a subprocess under a timeout,
and must end as a clean refusal (one ``error:`` line naming the file, nothing left behind) or, for
a valid input, exit 0. The whole suite runs as the script; its table is in docs/RELIABILITY.md."""

import importlib.util
import sys
import tempfile
from pathlib import Path

import pytest
from common import REPO

_spec = importlib.util.spec_from_file_location("fault_suite", REPO / "scripts" / "fault_suite.py")
suite = importlib.util.module_from_spec(_spec)
sys.modules["fault_suite"] = suite  # its dataclasses look their module up there
_spec.loader.exec_module(suite)

FAST = [c for c in suite.cases() if c.fast]


def test_the_fast_subset_is_a_few_dozen_cases_across_the_classes():
    assert 20 <= len(FAST) <= 40
    assert {c.cls.split()[0] for c in FAST} >= {"#1", "#5", "#6", "#9", "#11", "#14"}


@pytest.mark.parametrize("case", FAST, ids=[f"{c.cls.split()[0]} {c.name}" for c in FAST])
def test_fault_case(case, tmp_path):
    outcome, seconds, last = suite.run_case(case, tmp_path, timeout=60)
    assert outcome in ("ok", "refused"), f"{case.cls}: {case.name}: {outcome} ({seconds:.1f} s): {last}"


@pytest.mark.parametrize(
    "run, rc, err, after, outcome",
    [
        ("bad", None, "", {}, "hang"),
        ("bad", 1, "error: KeyError: 'x' (run with --debug for the traceback)\n", {}, "traceback"),
        ("bad", 2, "Traceback (most recent call last):\nerror: x\n", {}, "traceback"),
        ("bad", 0, "", {}, "exit 0 on bad input"),
        ("bad", 2, "error: /d/x.h5: bad\n", {"/d/new": None}, "left behind: new"),
        ("bad", 2, "error: /d/x.h5: bad\n", {"/d/mine": (1, 2)}, "touched: mine"),
        ("bad", 2, "error: no file named\n", {}, "unnamed file"),
        ("bad", 2, "error: /d/x.h5: one\nerror: two\n", {}, "messy message"),
        ("bad", 2, "error: /d/x.h5: pw S3cretPW\n", {}, "secret printed"),
        ("bad", 2, "note: repaired\nerror: /d/x.h5: bad\n", {}, "refused"),
        ("good", 0, "", {}, "ok"),
        ("good", 2, "error: /d/x.h5: bad\n", {}, "wrongly refused: error: /d/x.h5: bad"),
    ],
)
def test_the_judge_sees_every_kind_of_failure(run, rc, err, after, outcome):
    r = suite.Run("gpunet-prep", [], ["/d/x.h5"], bad=run == "bad", secret="S3cretPW")
    before = {"/d/mine": (1, 1)}
    assert suite.judge(r, rc, err, before, {**before, **after}) == outcome


def test_a_case_that_hangs_is_killed_at_the_timeout(tmp_path):
    case = suite.Case(
        "t", "sleeps", lambda d: suite.Run("python", ["import time; time.sleep(30)"], bad=False)
    )
    outcome, seconds, _ = suite.run_case(case, Path(tempfile.mkdtemp(dir=tmp_path)), timeout=1)
    assert outcome == "hang" and seconds < 10

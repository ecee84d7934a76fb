"""Shared fixtures: seeded random numbers. The sample generators of the raw
ops (by keyword, through the op spec) live in tests/samples.py, importable
from every test."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def gen():
    """A seeded CPU generator, the same in every test and run."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def seeded(request):
    """Seeds torch's global generator before the test: with the test
    module's SEED (default 0), so each module keeps its own numbers."""
    torch.manual_seed(getattr(request.module, "SEED", 0))


if os.environ.get("SAMPLEWT_EARLY_FAILURES"):
    # make gpu-check: print each failure's report as it happens, so that a test
    # that later kills the process (a signal) does not take the reports with it.
    def pytest_runtest_logreport(report):
        if report.failed:
            sys.stdout.write(f"\n--- early report: {report.nodeid} ({report.when}) ---\n"
                             f"{report.longreprtext}\n")
            sys.stdout.flush()

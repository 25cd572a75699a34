"""oneDNN for the tests: the loaded library, a skip with the loader's reason where it cannot be
loaded, and a failure in CI, where it is a base dependency."""
import os

import pytest


def require_onednn():
    from kernels.onednn import lib as L
    ok, reason = L.available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"oneDNN must load in CI (a base dependency): {reason}")
        pytest.skip(reason)
    return L.load()

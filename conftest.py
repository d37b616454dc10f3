"""Root test set-up: notebooks run in quick mode under the tests (their kernels inherit this)."""
import os

os.environ.setdefault("KDWB_QUICK", "1")

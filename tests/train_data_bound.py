"""tools/train.py with digits images that take 2 ms each to load: a data-bound run, where the main
process spends most of its time waiting for its loader workers (used by the Ctrl-C test)."""

from __future__ import annotations

import os
import runpy
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kdlab.data import digits  # noqa: E402

_load = digits.TensorImageDataset.__getitem__


def _slow_load(self, index: int):
    time.sleep(0.002)
    return _load(self, index)


digits.TensorImageDataset.__getitem__ = _slow_load
sys.argv = [os.path.join(REPO, "tools", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")

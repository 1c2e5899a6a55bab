"""tools/train.py under torchrun where rank 1 alone asks to stop (as a Ctrl-C that reached one rank
first) when the given number of global steps is done: `train_stop_on_rank1.py STEPS <train.py args>`."""

from __future__ import annotations

import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kdlab.engine import trainer  # noqa: E402

STOP_AT = int(sys.argv.pop(1))
_train_step = trainer.Trainer.train_step


def _train_step_then_ask(self, batch, epoch, step, sums):
    out = _train_step(self, batch, epoch, step, sums)
    if os.environ.get("RANK") == "1" and self.global_step + 1 == STOP_AT:
        self.stop_requested = True
    return out


trainer.Trainer.train_step = _train_step_then_ask
sys.argv = [os.path.join(REPO, "tools", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")

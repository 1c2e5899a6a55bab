"""tools/train.py that, after training, saves each rank's distiller buffers (teacher's left out) to
DIR/rank<r>.pt: `train_dump_buffers.py DIR <train.py args>` (e.g. to compare CRD's memory bank across ranks)."""

from __future__ import annotations

import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from kdlab.engine import trainer  # noqa: E402

DUMP_DIR = sys.argv.pop(1)
_fit = trainer.Trainer.fit


def _fit_then_dump(self):
    out = _fit(self)
    buffers = {n: b.detach().cpu() for n, b in self.distiller.named_buffers() if not n.startswith("teacher.")}
    torch.save(buffers, os.path.join(DUMP_DIR, f"rank{os.environ.get('RANK', '0')}.pt"))
    return out


trainer.Trainer.fit = _fit_then_dump
sys.argv = [os.path.join(REPO, "tools", "train.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")

"""Every reference (peer) YAML builds its distiller and trains one step on tiny data of its dataset.

The configs are mdistiller's and logit-standardization-KD's own files (rebuilt from
tests/reference/peer_configs.json by conftest.peer_config_dir), loaded as a user would load them with
`tools/train.py --cfg`; only the data location, the batch size, the device and the precision are
overridden. The teacher keeps its random initialization (no checkpoint is needed to take one step).
None is refused or ignored: every key they set is one kdlab acts on (tests/test_every_key.py).
"""

from __future__ import annotations

import glob
import os

import pytest
import torch
import yaml
from conftest import reference_table
from fixtures_data import write_cifar, write_imagefolder_dataset, write_tiny_imagenet

from kdlab.config import load_cfg
from kdlab.data import build_dataloaders
from kdlab.engine.builder import build_everything
from kdlab.engine.trainer import Trainer

FILES = sorted(reference_table("peer_configs.json")["files"])
IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict:
    """One tiny dataset per DATASET.TYPE the peer configs use, in the real on-disk layout."""
    cifar = tmp_path_factory.mktemp("cifar100")
    write_cifar(cifar, "cifar100", n_train=4, n_test=2)
    imagenet = tmp_path_factory.mktemp("imagenet")
    write_imagefolder_dataset(imagenet, "imagenet", wnids=IMAGENET_WNIDS, n_train=2, n_val=1)
    tiny_imagenet = tmp_path_factory.mktemp("tiny_imagenet")
    write_tiny_imagenet(tiny_imagenet, n_train=1, n_val=1)
    return {"cifar100": str(cifar), "imagenet": str(imagenet), "tiny_imagenet": str(tiny_imagenet)}


def test_the_table_has_every_peer_file(peer_config_dir):
    on_disk = sorted(os.path.relpath(p, peer_config_dir)
                     for p in glob.glob(os.path.join(peer_config_dir, "**", "*.yaml"), recursive=True))
    assert on_disk == FILES and len(FILES) >= 100


@pytest.mark.parametrize("rel", FILES)
def test_peer_config_trains_one_step(rel, data_roots, peer_config_dir, tmp_path):
    path = os.path.join(peer_config_dir, rel)
    dataset = (yaml.safe_load(open(path)).get("DATASET") or {}).get("TYPE", "cifar100")
    opts = ["DATASET.ROOT", data_roots.get(dataset, str(tmp_path)), "DATASET.NUM_WORKERS", "0",
            "SOLVER.BATCH_SIZE", "2", "DATASET.TEST.BATCH_SIZE", "2", "SOLVER.DEVICE", "cpu",
            "SOLVER.AMP", "False", "SOLVER.CHANNELS_LAST", "False", "LOG.PREFIX", str(tmp_path / "logs"),
            "LOG.PROGRESS", "False"]
    cfg = load_cfg(path, opts)
    splits, distiller = build_everything(cfg, load_teacher_weights=False)
    train_loader, val_loader, _ = build_dataloaders(cfg, splits=splits)
    trainer = Trainer(cfg, distiller, train_loader, val_loader, str(tmp_path / "run"), torch.device("cpu"))
    before = [p.detach().clone() for p in distiller.student.parameters()]
    batch = next(iter(train_loader))
    losses = trainer.train_step(batch, epoch=1, step=0, sums=torch.zeros(4, dtype=torch.float64))
    assert losses and all(torch.isfinite(v).all() for v in losses.values()), losses
    stuck = [n for (n, p), b in zip(distiller.student.named_parameters(), before) if torch.equal(p, b)]
    assert not stuck, f"{rel}: the step left these student parameters unchanged: {stuck}"


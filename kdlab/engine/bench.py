"""Benchmarks behind tools/bench.py: the training step, the train loader and batched augmentation.

`bench_step` builds the real Trainer for a config (student and teacher with random weights, so no
checkpoint is needed) and times `Trainer.train_step` -- the very step `fit` runs -- on batches of
the config's shape. CIFAR configs need no dataset: a few synthetic images are written in the real
python-pickle layout to a temporary folder and read through the same dataset classes and batch
transform. Optionally it times, interleaved with it in the same process and on the same batch, the
same config with the fast path off (fp32, NCHW, eager) and the reference mdistiller step (its CIFAR
models, its distiller's forward_train, sum of the losses, SGD step as in its BaseTrainer.train_iter),
so that load from other processes affects all of them alike and their ratio stays meaningful.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import os
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

from kdlab.data import build_dataloaders
from kdlab.data.batch_augment import benchmark_augment
from kdlab.data.cifar import LAYOUTS, locate
from kdlab.engine.builder import build_everything, build_splits, select_device
from kdlab.engine.run import configure_backends, prepare_distiller
from kdlab.engine.trainer import Trainer, _to_device
from kdlab.errors import ConfigError, DatasetNotFoundError

# Real split sizes, for the estimate of a whole run when the benchmark reads synthetic files.
CIFAR_SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000)}
PLAIN = {"SOLVER.AMP": False, "SOLVER.CHANNELS_LAST": False, "SOLVER.COMPILE": False}


def with_options(cfg: CfgNode, options: dict[str, Any]) -> CfgNode:
    """A frozen copy of cfg with dotted keys set to values."""
    out = cfg.clone()
    out.defrost()
    for key, value in options.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    out.freeze()
    return out


def write_synthetic_cifar(root: str, name: str, n_train: int, n_test: int, seed: int = 0) -> str:
    """Write random uint8 images in CIFAR's python-pickle layout under root; return root."""
    layout = LAYOUTS[name]
    folder = os.path.join(root, layout.folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(obj: dict, fname: str) -> None:
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(n: int) -> dict:
        data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        return {"data": data, layout.label_key: rng.integers(0, layout.num_classes, n).tolist()}

    per_file = math.ceil(n_train / len(layout.train_files))
    for fname in layout.train_files:
        dump(batch(per_file), fname)
    dump(batch(n_test), layout.test_file)
    dump({layout.names_key: [f"class_{i}" for i in range(layout.num_classes)]}, layout.meta_file)
    return root


def _has_real_data(cfg: CfgNode) -> bool:
    if cfg.DATASET.TYPE not in LAYOUTS:
        return True  # other datasets: the builder reads DATASET.ROOT and says what is missing
    try:
        locate(cfg.DATASET.ROOT, LAYOUTS[cfg.DATASET.TYPE])
        return True
    except DatasetNotFoundError:
        return False


@contextlib.contextmanager
def dataset_for_bench(cfg: CfgNode, n_train: int, n_test: int, prefer_real: bool = False) -> Iterator[tuple]:
    """Yield (cfg, source, sizes): cfg reading synthetic CIFAR files (or the real data), and the real split sizes.

    CIFAR configs get synthetic files in the real layout unless prefer_real and the dataset is present;
    digits is bundled; other datasets are read from DATASET.ROOT.
    """
    kind = cfg.DATASET.TYPE
    if kind not in LAYOUTS or (prefer_real and _has_real_data(cfg)):
        yield cfg, "real", None
        return
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-") as root:
        write_synthetic_cifar(root, kind, n_train, n_test, seed=cfg.EXPERIMENT.SEED)
        yield with_options(cfg, {"DATASET.ROOT": root, "DATASET.DOWNLOAD": False}), "synthetic", CIFAR_SIZES[kind]


def make_trainer(cfg: CfgNode, device: torch.device, run_dir: str, splits=None) -> Trainer:
    """The Trainer `kdlab.engine.run.train` would build (teacher with random weights), in train mode."""
    configure_backends(cfg)
    splits, distiller = build_everything(cfg, splits, load_teacher_weights=False)
    prepare_distiller(cfg, distiller, device)
    train_loader, val_loader, _ = build_dataloaders(cfg, splits=splits)
    trainer = Trainer(cfg, distiller, train_loader, val_loader, run_dir, device)
    trainer._begin_epoch(1)
    distiller.train()
    return trainer


def first_batch(trainer: Trainer):
    return next(iter(trainer.train_loader))


def trainer_step(trainer: Trainer, batch) -> Callable[[], None]:
    """Trainer.train_step on batch; each call is the next step of epoch 1 (its own augmentation draw)."""
    sums = torch.zeros(4, dtype=torch.float64, device=trainer.device)
    counter = itertools.count()
    return lambda: trainer.train_step(batch, 1, next(counter), sums)


def _import_file(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reference(repo: str, cfg: CfgNode) -> Callable[[torch.Tensor, torch.Tensor, int], Callable[[], None]]:
    """Import mdistiller from repo, check it has cfg's method and models; return make_step(image, target, classes).

    make_step builds mdistiller's training step (BaseTrainer.train_iter without .cuda()): its CIFAR models and
    distiller (fp32, NCHW, eager), SGD as its trainer builds it, forward_train, sum of the losses, backward,
    step, its top-1/top-5 accuracy and loss read-back.
    """
    if not os.path.isfile(os.path.join(repo, "mdistiller", "distillers", "_base.py")):
        raise ConfigError(f"--reference-repo {repo!r}: expected a checkout of mdistiller (mdistiller/distillers/)")
    sys.path.insert(0, os.path.abspath(repo))
    try:
        from mdistiller.distillers import distiller_dict
        from mdistiller.models.cifar import cifar_model_dict
    finally:
        sys.path.pop(0)
    accuracy = _import_file(os.path.join(repo, "mdistiller", "engine", "utils.py"), "_mdistiller_engine_utils").accuracy
    method, names = cfg.DISTILLER.TYPE, (cfg.DISTILLER.STUDENT, cfg.DISTILLER.TEACHER)
    if method not in distiller_dict:
        raise ConfigError(f"mdistiller has no {method!r} distiller (it has {', '.join(sorted(distiller_dict))})")
    missing = [n for n in names[: 1 if method == "NONE" else 2] if n not in cifar_model_dict]
    if missing:
        raise ConfigError(f"mdistiller's CIFAR models do not include {', '.join(missing)}")

    def make_step(image: torch.Tensor, target: torch.Tensor, num_classes: int) -> Callable[[], None]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ConfigError(f"mdistiller's CIFAR models need 3-channel images, this config has {tuple(image.shape)}")
        student = cifar_model_dict[names[0]][0](num_classes=num_classes)
        if method == "NONE":
            distiller = distiller_dict[method](student)
        else:
            teacher = cifar_model_dict[names[1]][0](num_classes=num_classes)
            distiller = distiller_dict[method](student, teacher, cfg)
        distiller.to(image.device).train()
        optimizer = torch.optim.SGD(
            distiller.get_learnable_parameters(), lr=cfg.SOLVER.LR, momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

        def step() -> None:
            optimizer.zero_grad()
            preds, losses = distiller(image=image.float(), target=target, epoch=1)
            loss = sum(v.mean() for v in losses.values())
            loss.backward()
            optimizer.step()
            accuracy(preds, target, topk=(1, 5))
            loss.cpu().detach().numpy().mean()

        return step

    return make_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], n: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, n rounds; each round calls all of them, in a rotating order."""
    names = list(steps)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(n):
        for name in names[i % len(names):] + names[: i % len(names)]:
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _memory_mb(device: torch.device, peak: bool = False) -> float:
    """CUDA memory allocated (or its peak since the last reset); else this process's RSS (or its peak)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 2**20
    if peak:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return _memory_mb(device, peak=True)


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _warm(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Run step n times (at least once); return the seconds it took (compilation included)."""
    start = time.perf_counter()
    for _ in range(max(1, n)):
        step()
    _sync(device)
    return time.perf_counter() - start


def _eval_seconds_per_image(trainer: Trainer) -> float:
    """Trainer.evaluate over the (small) val split, after one warm-up pass; seconds per image."""
    n = len(trainer.val_loader.dataset)
    trainer.evaluate()
    _sync(trainer.device)
    start = time.perf_counter()
    trainer.evaluate()
    _sync(trainer.device)
    trainer.distiller.train()
    return (time.perf_counter() - start) / max(n, 1)


def _is_plain(cfg: CfgNode) -> bool:
    return all(cfg.SOLVER[key.split(".")[1]] == value for key, value in PLAIN.items())


def bench_step(
    cfg: CfgNode,
    steps: int = 10,
    warmup: int = 3,
    reference_repo: str | None = None,
    plain: bool = True,
    estimate: bool = True,
) -> dict[str, Any]:
    """Median seconds per Trainer.train_step for cfg (plus the plain and mdistiller steps, interleaved).

    Peak memory is measured over kdlab's warm-up, before the other steps are built.
    """
    cfg = with_options(cfg, {"DATASET.NUM_WORKERS": 0, "LOG.PROGRESS": False})
    device = select_device(cfg)
    make_reference = load_reference(reference_repo, cfg) if reference_repo else None
    load_start = _load_average()
    with contextlib.ExitStack() as stack:
        data_cfg, source, sizes = stack.enter_context(
            dataset_for_bench(cfg, n_train=2 * cfg.SOLVER.BATCH_SIZE, n_test=2 * cfg.DATASET.TEST.BATCH_SIZE)
        )
        run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kdlab-bench-run-"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        memory_before = _memory_mb(device)
        trainer = make_trainer(data_cfg, device, os.path.join(run_dir, "kdlab"))
        stack.callback(trainer.logger.close)
        batch = first_batch(trainer)
        runners = {"kdlab": trainer_step(trainer, batch)}
        warmup_s = _warm(runners["kdlab"], warmup, device)
        peak_mb = _memory_mb(device, peak=True) - memory_before
        eval_s = _eval_seconds_per_image(trainer) if estimate else None
        if plain and not _is_plain(data_cfg):
            plain_trainer = make_trainer(with_options(data_cfg, PLAIN), device, os.path.join(run_dir, "plain"),
                                         splits=trainer.train_loader.splits)
            stack.callback(plain_trainer.logger.close)
            runners["plain"] = trainer_step(plain_trainer, batch)
            _warm(runners["plain"], warmup, device)
        if make_reference is not None:
            target = batch[1].to(device)
            runners["reference"] = make_reference(reference_input(trainer, batch), target, trainer.num_classes)
            _warm(runners["reference"], warmup, device)
        times = time_interleaved(runners, steps, device)
    if plain and "plain" not in times:
        times["plain"] = times["kdlab"]  # the config is the plain path
    result = summarize(cfg, times, device)
    result.update(peak_mem_mb=round(peak_mb, 1), steps=steps, warmup=warmup, warmup_s=round(warmup_s, 2), data=source)
    if estimate:
        n_train, n_test = sizes or (len(trainer.train_loader.dataset), len(trainer.val_loader.dataset))
        result.update(run_estimate(cfg, result["step_s"], eval_s, n_train, n_test))
    result["load_avg_1m"] = [load_start, _load_average()]
    return result


def summarize(cfg: CfgNode, times: dict[str, list[float]], device: torch.device) -> dict[str, Any]:
    """Medians, images/s and ratios of the timed steps, with what was timed."""
    bs = cfg.SOLVER.BATCH_SIZE
    step_s = statistics.median(times["kdlab"])
    out: dict[str, Any] = dict(
        config=cfg.DISTILLER.TYPE, teacher=cfg.DISTILLER.TEACHER if cfg.DISTILLER.TYPE != "NONE" else None,
        student=cfg.DISTILLER.STUDENT, dataset=cfg.DATASET.TYPE,
        step_s=step_s, step_s_min=min(times["kdlab"]), images_per_s=bs / step_s,
        amp=cfg.SOLVER.AMP_DTYPE if cfg.SOLVER.AMP else False, channels_last=bool(cfg.SOLVER.CHANNELS_LAST),
        compile=bool(cfg.SOLVER.COMPILE), device=str(device), batch_size=bs, threads=torch.get_num_threads(),
    )
    if "plain" in times:
        plain_s = statistics.median(times["plain"])
        out.update(plain_step_s=plain_s, plain_images_per_s=bs / plain_s, speedup_vs_plain=plain_s / step_s)
    if "reference" in times:
        ref_s = statistics.median(times["reference"])
        per_round = statistics.median(k / r for k, r in zip(times["kdlab"], times["reference"]))
        out.update(reference_step_s=ref_s, reference_images_per_s=bs / ref_s, ratio=step_s / ref_s,
                   ratio_per_round=per_round)
    return out


def run_estimate(cfg: CfgNode, step_s: float, eval_s_per_image: float, n_train: int, n_test: int) -> dict:
    """Hours of a whole run: ceil(n_train / batch) steps x epochs x step_s, plus an evaluation per epoch."""
    epochs = cfg.SOLVER.EPOCHS
    train_h = math.ceil(n_train / cfg.SOLVER.BATCH_SIZE) * epochs * step_s / 3600
    eval_h = n_test * epochs * eval_s_per_image / 3600
    return dict(eval_s_per_image=eval_s_per_image, epochs=epochs, train_images=n_train, test_images=n_test,
                run_estimate_h=round(train_h + eval_h, 2), run_estimate_train_h=round(train_h, 2))


def reference_input(trainer: Trainer, batch) -> torch.Tensor:
    """The float NCHW image batch kdlab's step sees after its batch transform (first view for two views)."""
    image = batch[0][0] if isinstance(batch[0], (tuple, list)) else batch[0]
    image = image.to(trainer.device)
    if trainer.train_batch_transform is not None:
        g = torch.Generator(device=trainer.device).manual_seed(0)
        image = trainer.train_batch_transform(image, g)
    return image.float().contiguous()


def bench_data(cfg: CfgNode, batches: int = 50, aug_images: int = 4096, aug_per_sample: int = 2048) -> dict[str, Any]:
    """Images/s of the config's train loader (+ its batch transform on the device) and of CIFAR augmentation.

    Real data when present under DATASET.ROOT; for CIFAR otherwise synthetic files in the real layout.
    """
    device = select_device(cfg)
    bs = cfg.SOLVER.BATCH_SIZE
    with dataset_for_bench(cfg, n_train=(batches + 1) * bs, n_test=bs, prefer_real=True) as (data_cfg, source, _):
        train_loader, _, _ = build_dataloaders(data_cfg, splits=build_splits(data_cfg))
        splits = train_loader.splits
        train_loader.sampler.set_epoch(1)
        transform = splits.train_batch_transform
        g = torch.Generator(device=device).manual_seed(0)
        n_images, start = 0, None
        for i, (image, _target, _index) in enumerate(train_loader):
            image = _to_device(image, device)
            if transform is not None:
                image = transform(image, g)
            if i == 0:  # worker start-up is not throughput
                _sync(device)
                start = time.perf_counter()
                continue
            n_images += image[0].shape[0] if isinstance(image, (tuple, list)) else image.shape[0]
            if i >= batches:
                break
        _sync(device)
        elapsed = time.perf_counter() - start if start is not None else float("nan")
    aug = benchmark_augment(n_images=aug_images, batch=bs, device=str(device), per_sample_images=aug_per_sample)
    return {
        "dataset": cfg.DATASET.TYPE, "data": source, "device": str(device), "batch_size": bs,
        "num_workers": cfg.DATASET.NUM_WORKERS, "augment": splits.info.get("augment", ""),
        "loader_batches": max(0, min(batches, len(train_loader) - 1)),
        "loader_images_per_s": n_images / elapsed if n_images else None,
        "augment_images_per_s": aug,
        "augment_speedup_vs_pil": aug["batched"] / aug["per_sample_pil"],
        "augment_speedup_vs_tensor": aug["batched"] / aug["per_sample"],
        "threads": torch.get_num_threads(),
    }

"""Benchmarks behind tools/bench.py: the training step (against its candidate settings, the plain fp32
step and mdistiller's), the train loader and batched augmentation. Not imported by training itself."""

from kdlab.benchmark.data import bench_data, dataset_for_bench, with_options, write_synthetic_cifar
from kdlab.benchmark.reference import load_reference
from kdlab.benchmark.step import PLAIN, auto_decision, bench_step, first_batch, make_trainer, trainer_step

__all__ = ["PLAIN", "auto_decision", "bench_data", "bench_step", "dataset_for_bench", "first_batch", "load_reference",
           "make_trainer", "trainer_step", "with_options", "write_synthetic_cifar"]

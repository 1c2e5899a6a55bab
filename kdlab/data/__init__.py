"""Data: build_dataloaders() and one file per dataset."""

from kdlab.data import cifar, digits, imagenet, tiny_imagenet, voc  # noqa: F401  (register the datasets)
from kdlab.data.build import DATASETS, DatasetSplits, build_dataloaders, build_datasets

__all__ = ["DATASETS", "DatasetSplits", "build_dataloaders", "build_datasets"]

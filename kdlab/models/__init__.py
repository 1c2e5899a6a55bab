"""Models: build_model() and the registered architectures."""

from kdlab.models import cifar, imagenet, segmentation, simple_cnn, vit  # noqa: F401  (register the architectures)
from kdlab.models.build import MODELS, build_model, resolve_model_name
from kdlab.models.checkpoint import load_state_dict_file, load_weights

__all__ = ["MODELS", "build_model", "resolve_model_name", "load_weights", "load_state_dict_file"]

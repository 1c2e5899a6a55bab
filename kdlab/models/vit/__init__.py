"""Small vision transformers for tiny datasets (the LS paper's "Distilling ViTs" students)."""

from kdlab.models.vit import tiny  # noqa: F401  (register the architectures)

"""kdlab: config-driven knowledge distillation for image models."""

from kdlab.config.hooks import set_registry_loader

__version__ = "0.1.0"


def _import_registering_packages() -> None:
    """Import the packages that tell kdlab.config their names (datasets, methods, models, optimizers)."""
    import kdlab.data  # noqa: F401
    import kdlab.distillers  # noqa: F401
    import kdlab.engine.optim  # noqa: F401
    import kdlab.models  # noqa: F401


# kdlab.config imports none of them; it runs this before it first validates a config.
set_registry_loader(_import_registering_packages)

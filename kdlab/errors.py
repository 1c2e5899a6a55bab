"""kdlab's own exception types: each carries a message a user can act on."""


class KdlabError(Exception):
    """Base class: the tools print the message on one line and exit with code 2."""


class ConfigError(KdlabError, ValueError):
    """A config key, value or type is wrong."""


class UnknownNameError(KdlabError, KeyError):
    """A registry lookup failed (unknown model, method, dataset, optimizer, ...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(KdlabError, FileNotFoundError):
    """A dataset is missing or not in the expected on-disk layout."""


class DatasetFormatError(KdlabError, ValueError):
    """A dataset file exists but is malformed or unsafe."""


class CheckpointError(KdlabError, RuntimeError):
    """A checkpoint is missing, unsafe, corrupt or does not fit the model."""


class TeacherCheckpointNotFound(CheckpointError, FileNotFoundError):
    """The teacher checkpoint file does not exist."""


class NonFiniteLossError(KdlabError, FloatingPointError):
    """A loss term became NaN or Inf during training."""

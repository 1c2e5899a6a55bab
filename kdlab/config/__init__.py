"""Config: defaults (every key, documented), load/merge/validate, CLI shortcuts."""

from kdlab.config.defaults import get_cfg
from kdlab.config.load import apply_logit_stand, flatten, load_cfg, merge_opts, run_dir, run_name

__all__ = ["get_cfg", "flatten", "load_cfg", "apply_logit_stand", "merge_opts", "run_dir", "run_name"]

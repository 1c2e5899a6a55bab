"""Every YAML path of the two reference codebases exists under configs/ and resolves to the reference's values.

A reference (peer) file means "its repository's defaults, updated with the file's values": the files are
rebuilt from tests/reference/peer_configs.json (conftest.peer_config_dir) and their repository's defaults
come from tests/reference/peer_defaults.json (each repository's engine/cfg.py). kdlab's file of the same
path, loaded with kdlab's defaults (kdlab.config.load_cfg), must give the same value for every key the
reference's cfg.py defines, apart from the documented default differences (DEFAULT_DIFFERENCES) on keys the
reference file does not state.

Which reference file each kdlab file matches: the file of the same relative path in every repository that
has one, except where the two repositories' files of one path differ (FOLLOWS names the repository kdlab
follows there; OTHER_FILE says where the other repository's values live in kdlab).
"""

from __future__ import annotations

import collections
import glob
import os

import pytest
from conftest import REPO, reference_table

from kdlab.config import get_cfg, load_cfg
from kdlab.config.load import flatten
from kdlab.models.build import resolve_model_name

MD, LS = "mdistiller", "logit-standardization-KD"
PEER = reference_table("peer_configs.json")["files"]
PEER_DEFAULTS = reference_table("peer_defaults.json")["defaults"]
CONFIGS = os.path.join(REPO, "configs")
BY_PATH: dict[str, dict[str, str]] = collections.defaultdict(dict)  # configs path -> {repo: peer table key}
for _key in PEER:
    _repo, _rel = _key.split("/", 1)
    BY_PATH[_rel][_repo] = _key
PATHS = sorted(BY_PATH)

# Where the two repositories' files of one path differ, kdlab's file follows FOLLOWS[path]; the other
# repository's file differs from kdlab's in exactly these keys (its value, kdlab's value).
FOLLOWS = {
    # LS's cifar100/kd.yaml is another pair (its last KD run, wrn_40_2 -> ShuffleV1); no README names the path.
    "cifar100/kd.yaml": (MD, {"EXPERIMENT.TAG": ("kd,wrn_40_2,ShuffleV1,2,9", "kd,res32x4,res8x4"),
                              "DISTILLER.TEACHER": ("wrn_40_2", "resnet32x4"),
                              "DISTILLER.STUDENT": ("ShuffleV1", "resnet8x4")}),
    # the LS README's ImageNet command (KD and KD+LS) runs this path; mdistiller's file has CE 0.5.
    "imagenet/r34_r18/kd.yaml": (LS, {"KD.LOSS.CE_WEIGHT": (0.5, 1.0)}),
}
# ...and these kdlab commands (file, overrides) give the other repository's values (up to the run's name
# and, for ImageNet, the spelling of the model names: ResNet34 = resnet34): both recipes stay one command away.
OTHER_FILE = {
    f"{LS}/cifar100/kd.yaml": ("cifar100/kd/wrn_40_2_ShuffleV1.yaml", ["SOLVER.LR", "0.05"]),
    f"{MD}/imagenet/r34_r18/kd.yaml": ("imagenet/kd/resnet34_resnet18.yaml", []),
}
# kdlab's defaults that differ from a reference's (README, "Defaults where the two reference codebases
# differ"); they apply where the reference file does not state the key, and kdlab's file must then resolve
# to kdlab's default.
DEFAULT_DIFFERENCES = {
    MD: {"LOG.PREFIX": "./logs, not ./output", "LOG.WANDB": "off: kdlab needs no network",
         "FITNET.INPUT_SIZE": "() = the dataset's size, (32, 32) on CIFAR"},
}
DEFAULT_DIFFERENCES[LS] = dict(DEFAULT_DIFFERENCES[MD], **{
    "KD.TEMPERATURE": "mdistiller's 4 (LS: 2); --logit-stand sets --base-temp",
    "KD.LOSS.KD_WEIGHT": "mdistiller's 0.9 (LS: 9); --logit-stand sets --kd-weight",
})
NAMING = ("EXPERIMENT.PROJECT", "EXPERIMENT.NAME", "EXPERIMENT.TAG")


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def peer_values(key: str, logit_stand: bool = False) -> dict:
    """The reference file's values over its repository's defaults (as its tools/train.py resolves them)."""
    repo = key.split("/", 1)[0]
    values = dict(PEER_DEFAULTS[repo], **PEER[key])
    if logit_stand:  # logit-standardization-KD's tools/train.py, --base-temp 2 --kd-weight 9
        values["EXPERIMENT.LOGIT_STAND"] = True
        if values["DISTILLER.TYPE"] in ("KD", "MLKD"):
            values["KD.TEMPERATURE"], values["KD.LOSS.KD_WEIGHT"] = 2, 9
        else:
            values["DKD.T"] = 2
            values["DKD.ALPHA"], values["DKD.BETA"] = values["DKD.ALPHA"] * 9, values["DKD.BETA"] * 9
    return values


def kdlab_values(rel: str, logit_stand: bool = False, opts: tuple = ()) -> dict:
    """kdlab's file resolved (and validated: nothing of the reference's is refused) with kdlab's defaults."""
    return flatten(load_cfg(os.path.join(CONFIGS, rel), opts, logit_stand=logit_stand))


def differences(key: str, mine: dict, logit_stand: bool = False) -> dict:
    """{key: (reference value, kdlab value)} over the reference's keys, less the documented differences."""
    repo = key.split("/", 1)[0]
    theirs, stated = peer_values(key, logit_stand), PEER[key]
    kdlab_default = flatten(get_cfg())
    out = {}
    for k in PEER_DEFAULTS[repo]:
        sets_kd = logit_stand and theirs["DISTILLER.TYPE"] in ("KD", "MLKD")  # --logit-stand sets KD.* for these
        if k in DEFAULT_DIFFERENCES[repo] and k not in stated and not (sets_kd and k.startswith("KD.")):
            assert _norm(mine[k]) in (_norm(theirs[k]), _norm(kdlab_default[k])), f"{k}: {mine[k]!r}"
            continue
        if _norm(theirs[k]) != _norm(mine[k]):
            out[k] = (theirs[k], mine[k])
    return out


def test_the_tables_cover_both_repositories():
    assert {k.split("/", 1)[0] for k in PEER} == {MD, LS} == set(PEER_DEFAULTS)
    assert len(PEER) == 114 and len(PATHS) == 95  # 19 paths in both
    for repo, keys in PEER_DEFAULTS.items():
        assert set(keys) <= set(flatten(get_cfg())), repo  # kdlab defines every key of both references


@pytest.mark.parametrize("rel", PATHS)
def test_reference_path_resolves_to_the_reference_values(rel):
    assert os.path.isfile(os.path.join(CONFIGS, rel)), f"configs/{rel} is missing"
    mine = kdlab_values(rel)
    follows, expected_diff = FOLLOWS.get(rel, (None, {}))
    for repo, key in BY_PATH[rel].items():
        want = {} if follows in (None, repo) else expected_diff
        assert differences(key, mine) == want, f"configs/{rel} vs {key}"
    if follows is not None:
        assert set(BY_PATH[rel]) == {MD, LS}  # a conflict needs both


@pytest.mark.parametrize("key", sorted(OTHER_FILE))
def test_the_other_recipe_of_a_conflicting_path_is_shipped_too(key):
    rel, opts = OTHER_FILE[key]
    mine = kdlab_values(rel, opts=opts)
    dataset = mine["DATASET.TYPE"]
    diff = differences(key, mine)
    for k in ("DISTILLER.TEACHER", "DISTILLER.STUDENT"):
        if k in diff and resolve_model_name(diff[k][0], dataset) == diff[k][1]:
            del diff[k]  # the same model, spelled as kdlab's other ImageNet configs spell it
    assert set(diff) <= set(NAMING), f"configs/{rel} vs {key}: {diff}"


LOGIT_STAND_FILES = sorted(k for k in PEER if k.startswith(LS) and FOLLOWS.get(k.split("/", 1)[1], (LS,))[0] == LS
                           and PEER[k].get("DISTILLER.TYPE") in ("KD", "MLKD", "DKD"))


@pytest.mark.parametrize("key", LOGIT_STAND_FILES)
def test_logit_stand_commands_resolve_exactly_as_in_logit_standardization_kd(key):
    """`--cfg <path> --logit-stand --base-temp 2 --kd-weight 9`: every key equal, KD.* included."""
    mine = kdlab_values(key.split("/", 1)[1], logit_stand=True)
    assert differences(key, mine, logit_stand=True) == {}


def _bases(path: str) -> list[str]:
    """The files path includes, nearest first."""
    import yaml

    out = []
    while True:
        base = (yaml.safe_load(open(path)) or {}).get("_BASE_")
        if not base:
            return out
        path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        out.append(path)


def test_one_experiment_is_one_file_and_includes():
    """Two shipped configs with the same values (apart from the run's name and the spelling of an ImageNet
    model) are one file holding the values and files that include it with _BASE_: no copied values."""
    groups = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True)):
        cfg = load_cfg(path, validate=False)
        flat = flatten(cfg)
        for k in ("DISTILLER.TEACHER", "DISTILLER.STUDENT"):
            flat[k] = resolve_model_name(flat[k], cfg.DATASET.TYPE)
        groups[repr(sorted((k, _norm(v)) for k, v in flat.items() if k not in NAMING))].append(path)
    copies = []
    for paths in groups.values():
        holders = [p for p in paths if not _bases(p)]
        if len(paths) > 1 and (len(holders) != 1 or any(holders[0] not in _bases(p) for p in paths if p != holders[0])):
            copies.append([os.path.relpath(p, CONFIGS) for p in paths])
    assert not copies, copies
    assert sum(len(p) > 1 for p in groups.values()) >= 20  # the include files are found as such


def test_no_two_config_paths_differ_only_in_case():
    """A case-insensitive file system (macOS, Windows) holds one of them only."""
    paths = collections.Counter(p.lower() for p in glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
    assert [p for p, n in paths.items() if n > 1] == []

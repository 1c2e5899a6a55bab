"""torchvision-backed ImageNet models: output contract, head swap, pretrained files and names, no download."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torchvision.models import VisionTransformer, get_model_weights

from kdlab.errors import CheckpointError, ConfigError
from kdlab.models import MODELS, build_model
from kdlab.models.imagenet.torchvision import BACKBONES, _fit_position_embedding, cached_weights_path

POOLED_DIM = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "wide_resnet50_2": 2048,
    "mobilenet_v2": 1280,
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
    "efficientnet_b0": 1280,
    "convnext_tiny": 768,
    "vit_b_16": 768,
}
REQUIRED = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """Any download attempt fails the test; the torch hub cache is an empty temporary folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_required_backbones_are_registered():
    assert set(REQUIRED) <= set(MODELS.names())
    assert set(BACKBONES) == set(POOLED_DIM)


def _check_contract(model: torch.nn.Module, name: str, size: int, num_classes: int) -> None:
    with torch.no_grad():
        plain = model.forward(torch.randn(1, 3, size, size))  # forward() skips the model's own hook
        logits, feats = model(torch.randn(1, 3, size, size))
    assert isinstance(plain, torch.Tensor)
    assert logits.shape == (1, num_classes)
    assert len(feats["feats"]) == len(feats["preact_feats"]) == 1 + len(BACKBONES[name].stages) == 5
    assert feats["pooled_feat"].shape[0] == 1 and feats["pooled_feat"].dim() == 2
    assert feats["pooled_feat"].shape[1] == POOLED_DIM[name]
    if not name.startswith("vit"):  # the stages shrink the image 4, 8, 16 and 32 times
        assert [f.shape[-1] for f in feats["feats"][1:]] == [max(1, size // s) for s in (4, 8, 16, 32)]
    for f in feats["feats"]:
        assert torch.isfinite(f).all()
    assert not any("_kdlab_tap" in m.__dict__ for m in model.modules())  # nothing kept after forward


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_contract_at_32_and_224(name):
    model = build_model(name, num_classes=10, **({"image_size": 32} if name.startswith("vit") else {})).eval()
    _check_contract(model, name, 32, 10)
    if name.startswith("vit"):
        model = build_model(name, num_classes=10).eval()  # image_size 224, torchvision's default
    _check_contract(model, name, 224, 10)


def test_model_is_torchvision_with_same_keys_and_outputs():
    model = build_model("resnet18", num_classes=1000).eval()
    reference = torchvision.models.resnet18()
    assert type(model) is type(reference)
    assert list(model.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = model(x)
        assert torch.equal(logits, reference.eval()(x))
        assert torch.allclose(feats["feats"][-1].mean((2, 3)), feats["pooled_feat"])
        assert torch.allclose(model.fc(feats["pooled_feat"]), logits)


def test_pooled_feat_is_taken_before_inplace_dropout():
    """efficientnet's classifier starts with Dropout(inplace=True); pooled_feat must not be dropped out."""
    model = build_model("efficientnet_b0", num_classes=10).train()
    model.classifier[0].p = 0.5
    _, feats = model(torch.randn(2, 3, 32, 32))
    assert (feats["pooled_feat"] != 0).all()


def _fake_imagenet_file(name: str, weights_name: str) -> tuple[str, dict]:
    """Write random 1000-class weights where torchvision's cache would hold `weights_name`."""
    state = torchvision.models.get_model(name).state_dict()
    path = cached_weights_path(get_model_weights(name).verify(weights_name))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize(
    "weights_name", ["IMAGENET1K_V1", "DEFAULT", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"]
)
def test_weights_name_loads_cached_file_then_swaps_head(weights_name):
    path, state = _fake_imagenet_file("mobilenet_v3_small", "IMAGENET1K_V1")
    assert path.endswith(os.path.join("hub", "checkpoints", "mobilenet_v3_small-047dcff4.pth"))
    model = build_model("mobilenet_v3_small", num_classes=10, pretrained=weights_name)
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.classifier[0].weight, state["classifier.0.weight"])
    assert model.classifier[3].weight.shape == (10, 1024)
    logits, feats = model.eval()(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 10) and feats["pooled_feat"].shape == (1, 576)


def test_missing_cached_weights_name_the_file_url_and_folder(monkeypatch):
    monkeypatch.setenv("KDLAB_OFFLINE", "1")
    weights = get_model_weights("resnet50").DEFAULT
    with pytest.raises(CheckpointError) as info:
        build_model("resnet50", num_classes=10, pretrained="DEFAULT")
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message and weights.url in message
    assert os.path.join(torch.hub.get_dir(), "checkpoints") in message and "KDLAB_OFFLINE is set" in message


def test_missing_weights_are_downloaded_into_the_hub_cache_with_a_progress_bar(monkeypatch):
    """Not offline: torchvision's file is fetched (faked here) into the cache under its own name, hash-checked."""
    calls = []
    state = torchvision.models.get_model("resnet18").state_dict()

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix, progress))
        torch.save(state, dst)

    monkeypatch.delenv("KDLAB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    weights = get_model_weights("resnet18").IMAGENET1K_V1
    model = build_model("resnet18", num_classes=10, pretrained="IMAGENET1K_V1")
    path = cached_weights_path(weights)
    assert calls == [(weights.url, path, "f37072fd", True)] and os.path.isfile(path)
    assert torch.equal(model.conv1.weight, state["conv1.weight"]) and model.fc.weight.shape == (10, 512)
    build_model("resnet18", num_classes=10, pretrained="IMAGENET1K_V1")
    assert len(calls) == 1  # the second build reads the cache


def test_failed_download_says_what_to_fetch_where(monkeypatch):
    from urllib.error import URLError

    def no_network(url, dst, hash_prefix=None, progress=True):
        raise URLError("no route to host")

    monkeypatch.delenv("KDLAB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(CheckpointError, match=r"could not download .*resnet18-f37072fd\.pth.*no route to host.*"
                                              r"save it as resnet18-f37072fd\.pth in "):
        build_model("resnet18", num_classes=10, pretrained="IMAGENET1K_V1")


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="IMAGENET1K_V1"):
        build_model("resnet18", num_classes=10, pretrained="IMAGENET1K_V7")


def test_local_file_with_matching_head_loads_everything(tmp_path):
    source = build_model("mobilenet_v3_small", num_classes=10)
    path = tmp_path / "student.pth"
    torch.save({"model": source.state_dict(), "arch": "mobilenet_v3_small", "format": "kdlab-weights"}, path)
    model = build_model("mobilenet_v3_small", num_classes=10, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_missing_local_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_model("resnet18", num_classes=10, pretrained=str(tmp_path / "nope.pth"))


def test_unsupported_model_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("resnet18", num_classes=10, in_channels=1)


def test_vit_position_embedding_is_resized_for_another_image_size():
    def tiny_vit(size: int) -> VisionTransformer:
        return VisionTransformer(
            image_size=size, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8
        )

    source, target = tiny_vit(64).state_dict(), tiny_vit(32)
    fitted = _fit_position_embedding(target, source)
    assert fitted["encoder.pos_embedding"].shape == (1, 1 + 4, 8)  # class token + 2x2 patches
    assert torch.equal(fitted["encoder.pos_embedding"][:, 0], source["encoder.pos_embedding"][:, 0])
    target.load_state_dict(fitted)

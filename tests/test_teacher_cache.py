"""Teacher cache: view spaces (render == the training augmentation, bit for bit), storage, builder, key, damage."""

from __future__ import annotations

import json
import os

import pytest
import torch
from fixtures_data import write_cifar

from kdlab.config import load_cfg
from kdlab.data import build_datasets
from kdlab.data.batch_augment import BatchCropFlipNormalize, BatchNormalize
from kdlab.data.digits import DigitsTwoViews, RandomShift
from kdlab.data.teacher_cache import (
    CacheCorrupt,
    CacheMismatch,
    CachePlan,
    NoAugment,
    TeacherCache,
    build_teacher_cache,
    cache_dir_for,
    cache_key,
    discrete_views,
    resolve_cache,
)
from kdlab.data.transforms import CIFAR100_MEAN, CIFAR100_STD
from kdlab.models import build_model

MEAN, STD = CIFAR100_MEAN, CIFAR100_STD


def old_random_shift(image: torch.Tensor, pad: int = 1, fill: float = 0.0) -> torch.Tensor:
    """digits' shift before it became RandomShift (the reference for 'digits runs do not change')."""
    h, w = image.shape[-2:]
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad), value=fill)
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return padded[..., i : i + h, j : j + w]


def uint8_batch(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def tiny_cnn(num_classes: int = 10, in_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("simple_cnn", num_classes, in_channels=in_channels, width=4, depth=2)
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def key_for(teacher, images, views, dtype="float32", precision="fp32"):
    return cache_key(teacher, images, views, dataset="cifar100", teacher_name="tiny", num_classes=10,
                     dtype=dtype, precision=precision)


# ---------------------------------------------------------------- view spaces
@pytest.mark.parametrize("transform", [
    BatchCropFlipNormalize(MEAN, STD), BatchCropFlipNormalize(MEAN, STD, padding=2, flip=False),
    BatchCropFlipNormalize(MEAN, STD, size=20), BatchNormalize(MEAN, STD), BatchNormalize(MEAN, STD, size=40)],
    ids=["crop_flip", "no_flip_pad2", "resize", "normalize", "normalize_resize"])
def test_render_of_sample_views_is_the_augmentation_bit_for_bit(transform):
    batch = uint8_batch(64)
    for seed in (0, 1):
        views = transform.sample_views(64, torch.Generator().manual_seed(seed))
        expected = transform(batch, torch.Generator().manual_seed(seed))
        assert torch.equal(transform.render(batch, views), expected)
        assert views.dtype == torch.int64 and 0 <= views.min() and views.max() < transform.num_views
    if transform.num_views > 1:  # the draws do vary
        assert len(views.unique()) > 10


def test_view_ids_encode_every_crop_and_flip_once():
    aug = BatchCropFlipNormalize(MEAN, STD)
    assert aug.num_views == 162 and BatchCropFlipNormalize(MEAN, STD, flip=False).num_views == 81
    views = torch.arange(162)
    top, left, flip = aug.decode_views(views)
    assert torch.equal(aug.encode_views(top, left, flip), views)
    assert len({(t, lf, f) for t, lf, f in zip(top.tolist(), left.tolist(), flip.tolist())}) == 162
    assert top.max() == 8 and left.max() == 8 and flip.dtype == torch.bool
    # view 0 is the top-left crop unflipped: its first row/column come from the zero padding
    out = aug.crop_flip(uint8_batch(1), *aug.decode_views(torch.tensor([0])))
    assert out[0, :, :4, :].eq(0).all() and out[0, :, 4:, 4:].ne(0).any()
    assert aug.view_key() == {"kind": "crop_flip", "mean": list(MEAN), "std": list(STD), "size": None,
                              "padding": 4, "flip": True}


def test_random_shift_draws_as_the_old_shift_and_renders_batches():
    image = torch.randn(1, 8, 8)
    shift = RandomShift(pad=1, fill=-0.5)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = old_random_shift(image, 1, -0.5)
        torch.manual_seed(seed)
        assert torch.equal(shift(image), expected)
    torch.manual_seed(3)
    views = [shift.sample_view() for _ in range(50)]
    assert sorted(set(views)) == list(range(9)) and shift.num_views == 9
    batch, ids = torch.randn(18, 2, 8, 8), torch.arange(18) % 9
    assert torch.equal(shift.render(batch, ids), torch.stack([shift.apply(b, int(v)) for b, v in zip(batch, ids)]))
    assert torch.equal(shift.apply(image, 4), image)  # the centre view is the image itself
    two = DigitsTwoViews(background=-0.5)  # its weak view keeps the old draws too
    torch.manual_seed(7)
    weak = two.weak(image)
    torch.manual_seed(7)
    assert torch.equal(weak, old_random_shift(image, 1, -0.5))


def digits_cfg(*opts: str):
    return load_cfg(None, ["DATASET.TYPE", "digits", "DISTILLER.TEACHER", "digits_teacher", *opts])


def test_discrete_views_of_digits_follow_training_indices():
    splits = build_datasets(digits_cfg("DATASET.VAL_SPLIT", "0.1"))
    images, views = discrete_views(splits)
    assert isinstance(views, RandomShift) and len(images) == len(splits.train)
    for k in (0, 5, len(images) - 1):
        torch.manual_seed(k)
        item = splits.train[k][0]
        torch.manual_seed(k)
        assert torch.equal(item, views.apply(images[k], views.sample_view()))
    images, views = discrete_views(build_datasets(digits_cfg("DATASET.AUGMENT", "False")))
    assert isinstance(views, NoAugment) and len(images) == 1437


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar100", n_train=8, n_test=4)
    return str(root)


def cifar_cfg(root: str, *opts: str):
    return load_cfg(None, ["DATASET.TYPE", "cifar100", "DATASET.ROOT", root, "DISTILLER.TEACHER", "resnet8x4", *opts])


def test_discrete_views_reasons(cifar_root):
    cfg = cifar_cfg(cifar_root, "DATASET.GPU_AUGMENT", "True")
    images, views = discrete_views(build_datasets(cfg))
    assert isinstance(views, BatchCropFlipNormalize) and images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
    cfg = cifar_cfg(cifar_root, "DATASET.GPU_AUGMENT", "False")
    assert "DATASET.GPU_AUGMENT is False" in discrete_views(build_datasets(cfg), cfg)
    assert "per-sample transform (Compose)" in discrete_views(build_datasets(cfg))
    cfg = cifar_cfg(cifar_root, "DATASET.GPU_AUGMENT", "True", "DATASET.TRAIN_TRANSFORMS", "['RandomHorizontalFlip']")
    assert discrete_views(build_datasets(cfg), cfg).startswith("DATASET.TRAIN_TRANSFORMS is set")
    assert "two views" in discrete_views(build_datasets(digits_cfg(), two_views=True))
    cfg = digits_cfg("DATASET.TEST_TRANSFORMS", "[{'CenterCrop': 8}]")
    assert "wraps its view space in per-sample steps, set by DATASET.TEST_TRANSFORMS" in discrete_views(
        build_datasets(cfg), cfg)


# ---------------------------------------------------------------- build and look up
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A float32 cache of a tiny CNN on 6 CIFAR-sized images x 162 views, in chunks of 2 images."""
    images, views, teacher = uint8_batch(6, seed=1), BatchCropFlipNormalize(MEAN, STD), tiny_cnn()
    key = key_for(teacher, images, views)
    path = cache_dir_for(str(tmp_path_factory.mktemp("tc")), key)
    cache = build_teacher_cache(teacher.train(), images, views, path, key, batch_size=100, progress=False,
                                chunk_images=2)
    return cache, teacher, images, views, key


def test_lookup_equals_the_teacher_on_the_rendered_views(built):
    cache, teacher, images, views, key = built
    assert teacher.training  # the builder restores the mode it ran in eval
    assert (cache.num_images, cache.num_views, cache.num_classes, cache.dtype) == (6, 162, 10, "float32")
    g = torch.Generator().manual_seed(0)
    index, view = torch.randint(0, 6, (40,), generator=g), torch.randint(0, 162, (40,), generator=g)
    with torch.no_grad():
        expected = teacher.eval()(views.render(images[index], view))[0]
    teacher.train()
    got = cache.lookup(index, view, "cpu")
    assert got.dtype == torch.float32 and got.shape == (40, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got[0], cache.lookup(index[:1], (view[:1] + 1) % 162, "cpu")[0])  # views differ
    meta = json.load(open(os.path.join(cache.path, "meta.json")))
    assert meta["complete"] and meta["num_chunks"] == 3 and len(meta["chunks"]) == 3 and meta["key"] == key
    assert os.path.getsize(os.path.join(cache.path, "logits.bin")) == 6 * 162 * 10 * 4
    with pytest.raises(IndexError, match="view in"):
        cache.lookup(torch.tensor([0]), torch.tensor([162]), "cpu")


def test_bfloat16_storage_is_the_rounded_float32_logits(built, tmp_path):
    cache, teacher, images, views, _ = built
    key = key_for(teacher, images, views, dtype="bfloat16")
    bf16 = build_teacher_cache(teacher, images, views, str(tmp_path / "bf16"), key, batch_size=512, progress=False)
    index, view = torch.arange(6).repeat_interleave(162), torch.arange(162).repeat(6)
    full = cache.lookup(index, view, "cpu")
    assert torch.equal(bf16.lookup(index, view, "cpu"), full.to(torch.bfloat16).float())
    assert os.path.getsize(os.path.join(bf16.path, "logits.bin")) == 6 * 162 * 10 * 2


def test_a_channels_last_teacher_gets_channels_last_batches(built, tmp_path):
    import copy

    cache, teacher, images, views, key = built
    nhwc = copy.deepcopy(teacher).to(memory_format=torch.channels_last)
    layouts = []
    nhwc.register_forward_pre_hook(lambda m, i: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    other = build_teacher_cache(nhwc, images, views, str(tmp_path), key, batch_size=500, progress=False)
    assert layouts == [True, True]
    index, view = torch.arange(6).repeat_interleave(162), torch.arange(162).repeat(6)
    torch.testing.assert_close(other.lookup(index, view, "cpu"), cache.lookup(index, view, "cpu"), rtol=1e-5, atol=1e-5)


class Interrupt(Exception):
    pass


def test_resume_recomputes_only_the_missing_chunks(built, tmp_path):
    _, teacher, images, views, key = built
    calls = []

    def stop_at_third(module, inputs):
        calls.append(len(inputs[0]))
        if len(calls) == 3:
            raise Interrupt

    # batch 162 = one image's views: chunks of 2 images are 2 calls, so the third call is in chunk 1
    handle = teacher.register_forward_pre_hook(stop_at_third)
    with pytest.raises(Interrupt):
        build_teacher_cache(teacher, images, views, str(tmp_path), key, batch_size=162, progress=False, chunk_images=2)
    handle.remove()
    meta = json.load(open(tmp_path / "meta.json"))
    assert list(meta["chunks"]) == ["0"] and not meta["complete"]
    with pytest.raises(CacheCorrupt, match="incomplete"):
        TeacherCache.open(str(tmp_path), key)
    calls.clear()
    handle = teacher.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    cache = build_teacher_cache(teacher, images, views, str(tmp_path), key, batch_size=162, progress=False)
    handle.remove()
    assert calls == [162] * 4  # images 2-5 only
    index, view = torch.arange(6).repeat_interleave(162), torch.arange(162).repeat(6)
    assert torch.equal(cache.lookup(index, view, "cpu"), built[0].lookup(index, view, "cpu"))
    calls.clear()
    build_teacher_cache(teacher, images, views, str(tmp_path), key, progress=False)  # complete: nothing to do
    assert calls == []


def copy_cache(cache, dest) -> str:
    import shutil

    return shutil.copytree(cache.path, dest)


def test_damaged_files_are_refused_and_rebuilt(built, tmp_path):
    cache, teacher, images, views, key = built
    path = copy_cache(cache, tmp_path / "c")
    data = os.path.join(path, "logits.bin")
    with open(data, "r+b") as f:  # flip one byte in chunk 1 (images 2-3)
        f.seek(3 * 162 * 10 * 4 + 17)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(CacheCorrupt, match=r"chunk 1 of 3 \(images 2-3\) fails its sha256 checksum.*cache_teacher"):
        TeacherCache.open(path, key)
    TeacherCache.open(path, key, verify=False)  # verify=False skips the checksums, not the size check
    calls = []
    handle = teacher.register_forward_pre_hook(lambda m, i: calls.append(len(i[0])))
    rebuilt = build_teacher_cache(teacher, images, views, path, key, batch_size=324, progress=False)
    assert calls == [324]  # chunk 1 only
    assert TeacherCache.open(path, key).key == key
    index, view = torch.arange(6).repeat_interleave(162), torch.arange(162).repeat(6)
    assert torch.equal(rebuilt.lookup(index, view, "cpu"), cache.lookup(index, view, "cpu"))
    with open(data, "r+b") as f:
        f.truncate(5 * 162 * 10 * 4)
    with pytest.raises(CacheCorrupt, match=r"truncated.*chunk 2 of 3 \(images 4-5\) onward"):
        TeacherCache.open(path, key, verify=False)
    calls.clear()
    build_teacher_cache(teacher, images, views, path, key, batch_size=324, progress=False)
    handle.remove()
    assert calls == [324]
    assert torch.equal(TeacherCache.open(path, key).lookup(index, view, "cpu"), rebuilt.lookup(index, view, "cpu"))
    with pytest.raises(FileNotFoundError):
        TeacherCache.open(str(tmp_path / "nothing"))


def test_a_cache_for_another_run_is_refused_naming_the_field(built):
    cache, teacher, images, views, key = built
    other_teacher = tiny_cnn(seed=1)
    with pytest.raises(CacheMismatch, match=r"teacher weights differ \(sha256 [0-9a-f]{12}\.\.\. in the cache, "
                                            r"sha256 [0-9a-f]{12}\.\.\. for this run\)"):
        TeacherCache.open(cache.path, key_for(other_teacher, images, views))
    other_pad = BatchCropFlipNormalize(MEAN, STD, padding=2)
    with pytest.raises(CacheMismatch, match=r"augmentation differs in padding \(4 in the cache, 2 for this run\)"):
        TeacherCache.open(cache.path, key_for(teacher, images, other_pad))
    with pytest.raises(CacheMismatch, match=r"storage dtype differs \(float32 in the cache, bfloat16 for this run\)"):
        TeacherCache.open(cache.path, key_for(teacher, images, views, dtype="bfloat16"))
    with pytest.raises(CacheMismatch, match="training images differ"):
        TeacherCache.open(cache.path, key_for(teacher, images.flip(0), views))
    with pytest.raises(CacheMismatch, match="teacher weights differ"):  # the builder refuses it too
        build_teacher_cache(other_teacher, images, views, cache.path, key_for(other_teacher, images, views))
    # the key ignores where and in which layout the weights are
    assert key_for(teacher.to(memory_format=torch.channels_last), images, views) == key
    assert cache_dir_for("/r", key) != cache_dir_for("/r", key_for(teacher, images, views, precision="bf16"))


def test_resolve_cache_for_a_digits_run(tmp_path):
    cfg = digits_cfg("LOG.PREFIX", str(tmp_path), "SOLVER.AMP", "False")
    splits = build_datasets(cfg)
    teacher = build_model("digits_teacher", 10, in_channels=1)
    plan = resolve_cache(cfg, teacher, splits)
    assert isinstance(plan, CachePlan) and (plan.num_images, plan.num_views) == (1437, 9)
    assert plan.path.startswith(os.path.join(str(tmp_path), "teacher_cache", "digits_digits_teacher_"))
    assert plan.key["precision"] == "fp32" and plan.key["dtype"] == "float32"
    assert plan.key["views"] == {"kind": "shift", "pad": 1, "fill": float(splits.train.images.min())}
    other = resolve_cache(cfg, teacher, splits, root=str(tmp_path / "x"), dtype="bfloat16", precision="bf16")
    assert other.path.startswith(str(tmp_path / "x")) and other.key["dtype"] == "bfloat16"
    cache = build_teacher_cache(teacher, plan.images, plan.views, plan.path, plan.key, progress=False)
    index, view = torch.tensor([0, 100, 1436]), torch.tensor([0, 4, 8])
    with torch.no_grad():
        expected = teacher.eval()(plan.views.render(plan.images[index], view))[0]
    torch.testing.assert_close(cache.lookup(index, view, "cpu"), expected, rtol=1e-5, atol=1e-5)
    cfg_two = digits_cfg("DATASET.TRAIN_TRANSFORMS", "['RandomHorizontalFlip']", "SOLVER.AMP", "False")
    assert "DATASET.TRAIN_TRANSFORMS" in resolve_cache(cfg_two, teacher, build_datasets(cfg_two))

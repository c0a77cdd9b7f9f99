"""Frozen CLIP loading and features, the CLIP stand-in's training and export, and the feature cache."""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fcae.data.datamodule import NSDDataModule
from lightning_fcae.data.shards import iter_raw_samples
from lightning_fcae.files.hashing import sha256_file
from lightning_fcae.models.clip import (
    FrozenClip,
    MissingWeightsError,
    QuickGeluWarning,
    encode_captions,
    load_clip,
    warn_if_openai_without_quickgelu,
)
from lightning_fcae.stages.clip_features import (
    CacheError,
    ClipFeatureLookup,
    build_clip_cache,
    cache_status,
    clip_cache_id,
    ensure_clip_cache,
)
from lightning_fcae.stages.clip_pretrain import ClipPretrain


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread hand-offs cost more than the maths, and dominate on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clip() -> FrozenClip:
    torch.manual_seed(0)
    return load_clip("fcae-clip-tiny", None)


def toy_image(i: int, size: int = 16) -> torch.Tensor:
    """The toy dataset's image ``i`` (any split) as ``[3, s, s]`` in [0, 1]."""
    return torch.full((3, size, size), ((i * 37) % 256) / 255)


def test_features_shapes_and_text_mean(clip):
    images = torch.rand(2, 3, 20, 20)
    tokens = clip.image_tokens(images)
    assert tokens.shape == (2, (32 // 8) ** 2 + 1, 512) == (2, clip.num_tokens, clip.embed_dim)
    torch.testing.assert_close(F.normalize(tokens[:, 0], dim=-1), clip.image_embed(images))

    text = clip.text_embed([["a"], ["b", "c"]])
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    single = torch.cat([clip.text_embed([[c]]) for c in "abc"])  # each unit-norm
    torch.testing.assert_close(text[0], single[0])
    torch.testing.assert_close(text[1], F.normalize(single[1:].mean(0), dim=0))


def test_missing_local_checkpoint_names_path(tmp_path):
    path = tmp_path / "nowhere" / "clip.pt"
    with pytest.raises(MissingWeightsError, match=str(path)):
        load_clip("fcae-clip-tiny", str(path))


def test_offline_tag_gives_download_hint(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(MissingWeightsError) as info:
        load_clip("ViT-B-32", "openai")
    message = str(info.value)
    repo = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].rstrip("/")
    assert repo in message and "clip_pretrained" in message and "ViT-B-32-quickgelu" in message


def openai_style_archive(path) -> nn.Module:
    """A tiny open_clip CLIP saved as OpenAI saved theirs: a traced TorchScript archive of the whole model
    (open_clip's module names are OpenAI's)."""
    torch.manual_seed(0)
    model = open_clip.create_model("fcae-clip-tiny").eval()
    images, tokens = (
        torch.rand(2, 3, *model.visual.image_size),
        torch.randint(0, 100, (2, model.context_length)),
    )
    with torch.no_grad():
        torch.jit.trace(model, (images, tokens), strict=False, check_trace=False).save(str(path))
    return model


def test_an_openai_torchscript_archive_loads_without_running_it(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    original = openai_style_archive(path)
    with pytest.raises(RuntimeError, match="weights_only"):  # what open_clip's own loader tripped on
        torch.load(path, weights_only=True)
    loaded = load_clip("fcae-clip-tiny", str(path))
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in original.state_dict().items())
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = F.normalize(original.encode_image(loaded.preprocess(images)), dim=-1)
    assert torch.equal(loaded.image_embed(images), expected)
    with pytest.raises(ValueError, match=r"does not fit fcae-clip-small \(the TorchScript archive holds no "):
        load_clip("fcae-clip-small", str(path))  # the right format, another architecture's weights


def test_a_torchscript_archive_that_holds_more_than_tensors_is_refused_unrun(tmp_path, capsys):
    import zipfile

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("evil/code/__torch__.py", "")
    with pytest.raises(
        ValueError, match=r"names __builtin__\.print, which is not read.*refused rather than run"
    ):
        load_clip("fcae-clip-tiny", str(path))
    assert "ran" not in capsys.readouterr().out


def test_openai_weights_in_the_gelu_architecture_warn(tmp_path):
    with pytest.warns(QuickGeluWarning, match="clip_model ViT-B-32 uses GELU.*ViT-B-32-quickgelu"):
        warn_if_openai_without_quickgelu("ViT-B-32", tmp_path / "ViT-B-32-openai.safetensors")
    path = tmp_path / "weights.pt"
    openai_style_archive(path)  # OpenAI's format, whatever its name
    with pytest.warns(QuickGeluWarning):
        warn_if_openai_without_quickgelu("ViT-B-32", path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_openai_without_quickgelu("ViT-B-32-quickgelu", path)
        warn_if_openai_without_quickgelu("ViT-B-32", tmp_path / "laion2b.safetensors")


def test_the_offline_hint_names_the_file_the_paper_plan_expects():
    import yaml

    from lightning_fcae.models.clip import _download_hint

    plan = yaml.safe_load((Path(__file__).resolve().parents[1] / "experiments/paper.yaml").read_text())
    cfg = open_clip.get_pretrained_cfg(plan["clip_model"], "openai")
    assert f"copy it to {plan['clip_pretrained']} and" in _download_hint(plan["clip_model"], "openai", cfg)


def test_frozen_clip_stays_frozen(clip):
    adapter, head = nn.Conv2d(3, 3, 1), nn.Linear(512, 3)
    parent = nn.ModuleDict({"adapter": adapter, "clip": clip, "head": head})
    parent.train()
    assert not any(m.training for m in clip.modules()) and head.training
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    optimizer = torch.optim.AdamW(parent.parameters(), lr=0.1)  # CLIP's parameters included on purpose

    images = torch.rand(4, 3, 16, 16)
    loss = head(clip.image_embed(adapter(images))).square().mean()
    loss = loss + head(clip.image_tokens(adapter(images))).square().mean()
    loss.backward()
    optimizer.step()

    assert adapter.weight.grad.abs().sum() > 0  # gradients flow through the frozen tower
    assert all(p.grad is None and not p.requires_grad for p in clip.parameters())
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())


def test_clip_pretrain_learns_and_exports(toy_dataset, tmp_path):
    L.seed_everything(0)
    data = NSDDataModule(str(toy_dataset), batch_size=16, num_workers=0, with_images=True)
    export = tmp_path / "clip" / "fcae-clip-tiny.pt"  # the file named after the architecture trained
    module = ClipPretrain(
        data.num_voxels,
        "fcae-clip-tiny",
        lr=1e-3,
        warmup_fraction=0.1,
        export_path=str(tmp_path / "clip" / "{architecture}.pt"),
    )
    fixed = next(iter(data.eval_dataloader("train")))  # 16 distinct images, no augmentation
    images, texts = fixed["image"].float() / 255, [c[0] for c in fixed["captions"]]

    def loss() -> float:
        with torch.no_grad():
            return module.contrastive_loss(module.preprocess(images), texts).item()

    before = loss()
    trainer = L.Trainer(
        max_steps=60,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    assert loss() < before - 0.3, (before, loss())
    assert 0 <= trainer.callback_metrics["val/top1"] <= 1

    loaded = load_clip("fcae-clip-tiny", str(export))  # written by on_train_end
    module.eval()
    with torch.no_grad():
        trained = F.normalize(module.model.encode_image(module.preprocess(images)), dim=-1)
        captions = fixed["captions"]
        assert torch.equal(loaded.image_embed(images), trained)
        assert torch.equal(
            loaded.text_embed(captions), encode_captions(module.model, module.tokenizer, captions)
        )
    assert clip_cache_id("fcae-clip-tiny", str(export)) == f"fcae-clip-tiny-{sha256_file(export)[:12]}"
    direct = open_clip.create_model("fcae-clip-tiny", pretrained=str(export))
    assert all(
        torch.equal(a, b) for a, b in zip(direct.state_dict().values(), loaded.model.state_dict().values())
    )
    with pytest.raises(ValueError, match="does not fit fcae-clip-small.*another architecture"):
        load_clip("fcae-clip-small", str(export))  # tiny weights under the small name


def test_clip_cache(toy_dataset, clip, monkeypatch):
    root = toy_dataset
    cache_id = clip_cache_id("fcae-clip-tiny", None)
    assert cache_id == "fcae-clip-tiny-random" and cache_status(root, cache_id) == "miss"

    seen, image_tokens = [], clip.image_tokens
    with monkeypatch.context() as patch:  # count the images that go through CLIP
        patch.setattr(clip, "image_tokens", lambda images: seen.append(len(images)) or image_tokens(images))
        cache = build_clip_cache(root, clip, cache_id, batch_size=10, progress=False)
    assert cache_status(root, cache_id) == "hit"
    with monkeypatch.context() as patch:  # a hit is found by the weights' id: CLIP is not even loaded
        patch.setattr("lightning_fcae.models.clip.load_clip", lambda *a: pytest.fail("loaded CLIP on a hit"))
        assert ensure_clip_cache(root, "fcae-clip-tiny", None) == cache

    ids = {json.loads(s["meta.json"])["image_id"] for s in iter_raw_samples(sorted(root.glob("*/*.tar")))}
    cached = np.concatenate([np.load(cache / split / "image_ids.npy") for split in ("train", "val", "test")])
    assert len(cached) == len(set(cached.tolist())) == len(ids) == sum(seen) == 64  # 128 samples, 64 images
    meta = json.loads((cache / "meta.json").read_text())
    assert (meta["num_tokens"], meta["embed_dim"], meta["splits"]) == (
        17,
        512,
        {"train": 48, "val": 8, "test": 8},
    )
    assert np.load(cache / "train" / "image_tokens.npy", mmap_mode="r").dtype == np.float16

    lookup = pickle.loads(pickle.dumps(ClipFeatureLookup(cache)))
    with torch.no_grad():
        for image_id, i in ((5, 5), (1003, 3), (2007, 7)):
            features = lookup(image_id)
            image = toy_image(i)[None]
            expected = {
                "clip_image_tokens": clip.image_tokens(image)[0],
                "clip_image_embed": clip.image_embed(image)[0],
                "clip_text_embed": clip.text_embed([[f"toy image {i}"]])[0],
            }
            assert features.keys() == expected.keys()
            for name, value in expected.items():
                assert features[name].dtype == torch.float32
                torch.testing.assert_close(features[name], value, atol=2e-3, rtol=2e-3)

    with pytest.raises(CacheError, match=f"999999.*{cache}"):
        lookup(999999)

    manifest = root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"toy"', '"toy-v2"'))
    assert cache_status(root, cache_id) == "stale"
    assert build_clip_cache(root, clip, cache_id, progress=False) == cache
    assert cache_status(root, cache_id) == "hit" and not list(cache.parent.glob(".*"))


def test_a_model_meant_to_be_random_says_so_once(caplog):
    """open_clip's 'No pretrained weights loaded' is noise where random weights are the intent; our own
    warning for a random *frozen* CLIP (tests only) stays."""
    from lightning_fcae.models.clip import create_random_model, load_clip

    with caplog.at_level(logging.WARNING):
        create_random_model("fcae-clip-tiny")
        load_clip("fcae-clip-tiny", None)
    messages = [record.getMessage() for record in caplog.records]
    assert not any("No pretrained weights loaded" in m for m in messages), messages
    assert any("with random weights (pretrained=None)" in m for m in messages)
    with caplog.at_level(logging.WARNING):  # the filter is gone afterwards
        logging.getLogger().warning("No pretrained weights loaded for model 'x'")
    assert "No pretrained weights loaded for model 'x'" in caplog.text


def test_the_datamodule_streams_the_features_a_stage_hands_it(toy_dataset):
    """The DataModule knows nothing of CLIP: it adds whatever per-image lookup it is given to each
    sample (by meta.json's image_id) and stacks it into the batch; None stops it."""
    data = NSDDataModule(str(toy_dataset), batch_size=8, num_workers=0, with_images=False)
    data.stream_image_features(partial(_id_feature, scale=2.0))  # picklable, as workers need
    batch = next(iter(data.eval_dataloader("val")))
    # the toy dataset's val sample i shows image 1000 + i, captioned "toy image {i}"
    ids = torch.tensor([1000 + int(captions[0].split()[-1]) for captions in batch["captions"]])
    assert torch.equal(batch["feature"], 2.0 * ids[:, None].float().expand(-1, 3))
    data.stream_image_features(None)
    assert "feature" not in next(iter(data.eval_dataloader("val")))


def _id_feature(image_id: int, scale: float) -> dict[str, torch.Tensor]:
    return {"feature": torch.full((3,), scale * image_id)}


def test_a_stage_streams_clip_features_only_through_nsd_datamodule():
    from types import SimpleNamespace

    from lightning_fcae.stages.clip_features import stream_clip_features

    assert stream_clip_features(SimpleNamespace(datamodule=None), "fcae-clip-tiny", None) is None
    with pytest.raises(TypeError, match="NSDDataModule.*clip_image_tokens"):
        stream_clip_features(SimpleNamespace(datamodule=L.LightningDataModule()), "fcae-clip-tiny", None)


@pytest.mark.parametrize(
    ("model", "grid"),
    [("ViT-B-32", (50, 512)), ("fcae-clip-small", (65, 512)), ("fcae-clip-demo", (17, 512))],
)
def test_the_token_grid_read_from_the_config_is_the_models(model, grid):
    from lightning_fcae.models.clip import clip_token_grid

    assert clip_token_grid(model) == grid
    if model != "ViT-B-32":  # building ViT-B-32 costs seconds: the small ones show the formula holds
        clip = load_clip(model, None)
        assert (clip.num_tokens, clip.embed_dim) == grid

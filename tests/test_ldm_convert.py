"""LDM folders and the CompVis converter: ``load_ldm``'s layout and ``lightning-fcae convert-ldm``."""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from lightning_fcae.cli.convert_ldm import main as convert_main
from lightning_fcae.models.ldm import build_ldm, ldm_config, load_ldm, save_ldm
from lightning_fcae.models.ldm_convert import convert_compvis_ldm


def test_load_ldm_names_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vqvae.*unet.*scheduler"):
        load_ldm(tmp_path)


def test_loading_an_ldm_prints_no_accelerate_notice(tmp_path, capfd):
    """diffusers asks for accelerate on every from_pretrained; it would save nothing here
    (lightning_fcae/models/__init__.py says why), so the notice is dropped."""
    load_ldm(save_ldm(build_ldm("tiny"), tmp_path / "ldm"))
    assert "accelerate" not in capfd.readouterr().err


RESNET_TO_COMPVIS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VQ_ATTENTION_TO_COMPVIS = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _compvis_vq_key(key: str, n_blocks: int) -> str:
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{n_blocks - 1 - int(m[1])}.block.", key)
    key = re.sub(
        r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{n_blocks - 1 - int(m[1])}.upsample.", key
    )
    key = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
    if ".attn_1." in key:
        for ours, theirs in VQ_ATTENTION_TO_COMPVIS.items():
            key = key.replace(f".{ours}.", f".{theirs}.")
    return key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")


def _compvis_unet_key(key: str, per_block: int, up_has_attention: list[bool]) -> str:
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0"}
    top |= {"time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for ours, theirs in top.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours) :]

    def resnet(rest: str) -> str:
        name, param = rest.split(".", 1)
        return f"{RESNET_TO_COMPVIS[name]}.{param}"

    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{(b + 1) * (per_block + 1)}.0.op.{rest.removeprefix('conv.')}"
        index = 1 + b * (per_block + 1) + j
        return (
            f"input_blocks.{index}.0.{resnet(rest)}"
            if kind == "resnets"
            else f"input_blocks.{index}.1.{rest}"
        )
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)
    b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    index = b * (per_block + 1) + j
    if kind == "upsamplers":
        return f"output_blocks.{b * (per_block + 1) + per_block}.{2 if up_has_attention[b] else 1}.{rest}"
    return (
        f"output_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    )


def _compvis_tiny(tmp_path) -> tuple[Path, Path, object]:
    """A tiny LDM as a CompVis checkpoint + YAML config (what the original latent-diffusion repo writes)."""
    torch.manual_seed(0)
    ldm, config = build_ldm("tiny"), ldm_config("tiny")
    vq, unet = config["vq"], config["unet"]
    n_vq = len(vq["block_out_channels"])
    state = {}
    for key, value in ldm.vq.state_dict().items():
        compvis = _compvis_vq_key(key, n_vq)
        state["first_stage_model." + compvis] = (
            value[..., None, None] if ".attn_1." in compvis and value.ndim == 2 else value
        )
    up_attention = ["CrossAttn" in t for t in unet["up_block_types"]]
    for key, value in ldm.unet.state_dict().items():
        state["model.diffusion_model." + _compvis_unet_key(key, unet["layers_per_block"], up_attention)] = (
            value
        )
    state["cond_stage_model.embedding.weight"] = torch.zeros(3, 32)  # dropped by the converter
    ch = vq["block_out_channels"][0]
    compvis_config = {
        "model": {
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "timesteps": 1000,
                "conditioning_key": "crossattn",
                "unet_config": {
                    "params": {
                        "image_size": unet["sample_size"],
                        "in_channels": 3,
                        "out_channels": 3,
                        "model_channels": unet["block_out_channels"][0],
                        "attention_resolutions": [1],
                        "num_res_blocks": unet["layers_per_block"],
                        "channel_mult": [
                            c // unet["block_out_channels"][0] for c in unet["block_out_channels"]
                        ],
                        "num_heads": unet["attention_head_dim"],
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": unet["cross_attention_dim"],
                    }
                },
                "first_stage_config": {
                    "target": "ldm.models.autoencoder.VQModelInterface",
                    "params": {
                        "embed_dim": 3,
                        "n_embed": vq["num_vq_embeddings"],
                        "ddconfig": {
                            "double_z": False,
                            "z_channels": 3,
                            "resolution": vq["sample_size"],
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": ch,
                            "ch_mult": [c // ch for c in vq["block_out_channels"]],
                            "num_res_blocks": vq["layers_per_block"],
                            "attn_resolutions": [],
                        },
                    },
                },
            },
        }
    }
    torch.save({"state_dict": state, "global_step": 0}, tmp_path / "model.ckpt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(compvis_config))
    return tmp_path / "model.ckpt", tmp_path / "config.yaml", ldm


def test_convert_compvis_checkpoint_round_trip(tmp_path):
    ckpt, config, reference = _compvis_tiny(tmp_path)
    converted = load_ldm(convert_compvis_ldm(ckpt, config, tmp_path / "diffusers"))
    for ours, theirs in ((converted.vq, reference.vq), (converted.unet, reference.unet)):
        ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
        assert ours_sd.keys() == theirs_sd.keys()
        assert all(torch.equal(ours_sd[k], theirs_sd[k]) for k in theirs_sd)
    plain = lambda value: list(value) if isinstance(value, list | tuple) else value  # noqa: E731
    for key in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "cross_attention_dim",
        "sample_size",
    ):
        assert plain(converted.unet.config[key]) == plain(reference.unet.config[key]), key
    assert torch.allclose(converted.scheduler.alphas_cumprod, reference.scheduler.alphas_cumprod)
    with pytest.raises(FileExistsError):
        convert_compvis_ldm(ckpt, config, tmp_path / "diffusers")


def _convert_error(capsys, ckpt, config, *flags) -> str:
    """Run ``convert-ldm`` as the user would; it must fail with one ``error:`` line, not a traceback."""
    assert convert_main([str(ckpt), "--config", str(config), "--out", str(ckpt.parent / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_convert_missing_inputs_are_clear_errors(tmp_path, capsys):
    ckpt, config = tmp_path / "model.ckpt", tmp_path / "config.yaml"
    torch.save({"state_dict": {}}, ckpt)
    config.write_text("model: {}\n")
    assert str(tmp_path / "nope.yaml") in _convert_error(capsys, ckpt, tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.ckpt") in _convert_error(capsys, tmp_path / "nope.ckpt", config)
    torch.save({"state_dict": {"first_stage_model.x": torch.zeros(1)}}, ckpt)
    assert "no model.params; expected a CompVis LatentDiffusion config" in _convert_error(
        capsys, ckpt, config
    )


def _zip_of_notes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not weights")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [random.Random(0).randbytes(4096), b"hello world\n", _zip_of_notes()],  # a zip, not torch's layout
    ids=["random-bytes", "text", "other-zip"],
)
def test_convert_corrupt_checkpoint_does_not_advise_trust_pickle(tmp_path, capsys, content):
    ckpt, config = tmp_path / "model.ckpt", tmp_path / "config.yaml"
    config.write_text("model: {}\n")
    ckpt.write_bytes(content)
    err = _convert_error(capsys, ckpt, config)
    assert f"{ckpt}: not a readable PyTorch checkpoint" in err
    assert "trust" not in err and "weights_only" not in err


def test_convert_non_allowlisted_class_advises_trust_pickle(tmp_path, capsys):
    ckpt, config = tmp_path / "model.ckpt", tmp_path / "config.yaml"
    config.write_text("model: {}\n")
    torch.save({"state_dict": {}, "hparams": argparse.Namespace()}, ckpt)  # as old Lightning pickles
    err = _convert_error(capsys, ckpt, config)
    assert "argparse.Namespace" in err and "--trust-pickle" in err
    # what trusting means, and when to: the user is asked to run code from the file
    assert "can execute arbitrary code" in err and "only for a checkpoint from a source you know" in err
    # trusted, it loads: the failure moves on to the (empty) contents
    assert "no first_stage_model.* keys" in _convert_error(capsys, ckpt, config, "--trust-pickle")


def test_convert_trusted_pickle_of_missing_code_is_a_clear_error(tmp_path, capsys, monkeypatch):
    ghost = types.ModuleType("ghost_module")
    ghost.Callback = type("Callback", (), {"__module__": "ghost_module"})
    monkeypatch.setitem(sys.modules, "ghost_module", ghost)
    ckpt, config = tmp_path / "model.ckpt", tmp_path / "config.yaml"
    config.write_text("model: {}\n")
    torch.save({"state_dict": {}, "callbacks": ghost.Callback()}, ckpt)
    monkeypatch.delitem(sys.modules, "ghost_module")
    err = _convert_error(capsys, ckpt, config, "--trust-pickle")
    assert "not installed" in err and "ghost_module" in err and "corrupt" not in err

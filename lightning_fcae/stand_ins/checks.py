"""Are the stand-ins good enough to build on? Figures on the test images, each beside its chance level.

``lightning-fcae stand-ins check`` prints (and ``stand-ins train`` records in the cards):

* judge: the scene classifier on the real test images (its shape / colour accuracy bounds the others);
* VQ: round trip of the test images (PSNR, SSIM), and the judge on the round trips (what the VQ loses);
* LDM samples drawn from each test image's CLIP tokens, from its captions, and from nothing: the judge's
  shape / colour accuracy (chance 10% / 12.5%). An LDM that ignores its condition scores chance;
* eps-MSE with each image's own condition and with another image's (same noise and timesteps): the
  gain in % is how much the UNet relies on the condition;
* CLIP: image -> caption retrieval among the distinct test images (chance 1 / n).

Every test image counts once (NSD-style test images repeat across subjects). Nothing here trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.datamodule import NSDDataModule
from ..inference.sampling import sample_images
from ..metrics.image import ssim_per_image, to_luma
from ..models.clip import load_clip
from ..models.ldm import load_ldm, to_model_range, vq_downsampling
from ..models.scene_classifier import SceneClassifier
from .shipped import StandIns

CHANCE = {"shape": 0.10, "color": 0.125}  # uniform labels: 10 shapes, 8 colours


def _test_images(data_dir: str, image_size: int) -> dict:
    """The distinct test images ``[n, 3, s, s]`` in [0, 1], their captions and labels."""
    data = NSDDataModule(data_dir, batch_size=256, num_workers=0, image_size=image_size)
    seen, images, captions, shapes, colors = set(), [], [], [], []
    for batch in data.eval_dataloader("test"):
        for i, key in enumerate(batch["key"]):
            image_id = key.split("_", 1)[1]
            if image_id in seen:
                continue
            seen.add(image_id)
            images.append(batch["image"][i].float() / 255)
            captions.append(batch["captions"][i])
            shapes.append(int(batch["labels"]["shape"][i]))
            colors.append(int(batch["labels"]["color"][i]))
    return {
        "image": torch.stack(images),
        "captions": captions,
        "shape": torch.tensor(shapes),
        "color": torch.tensor(colors),
    }


def _judge(classifier: SceneClassifier, images: Tensor, test: dict) -> dict[str, float]:
    with torch.no_grad():
        shape, color = classifier(images)
    return {
        "shape": (shape.argmax(1) == test["shape"]).float().mean().item(),
        "color": (color.argmax(1) == test["color"]).float().mean().item(),
    }


def _psnr(preds: Tensor, target: Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE), images in [0, 1]."""
    mse = (preds - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).mean().item()


def _caption_retrieval(image_embed: Tensor, text_embed: Tensor, captions: list[list[str]]) -> float:
    """Top-1 image -> caption retrieval; an image whose retrieved caption set equals its own counts."""
    best = (image_embed @ text_embed.T).argmax(1).tolist()
    return sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(best)


@torch.no_grad()
def run_checks(
    stand_ins: StandIns,
    data_dir: str,
    steps: int = 25,
    guidance: float = 3.0,
    seed: int = 0,
    noise_draws: int = 4,
    batch_size: int = 100,
) -> dict:
    """All figures (see the module doc) as a JSON-able dict."""
    ldm = load_ldm(stand_ins.ldm)
    vq, unet, condition = ldm.vq.eval(), ldm.unet.eval(), ldm.condition.eval()
    size = unet.config.sample_size * vq_downsampling(vq)
    test = _test_images(data_dir, size)
    images, n = test["image"], len(test["image"])
    clip = load_clip(stand_ins.clip_model, str(stand_ins.clip_weights))
    classifier = SceneClassifier.from_pretrained(stand_ins.classifier).eval()

    tokens = torch.cat([clip.image_tokens(x) for x in images.split(batch_size)])  # n T D
    image_embed = F.normalize(tokens[:, 0].float(), dim=-1)
    texts = torch.cat(
        [clip.text_embed(test["captions"][i : i + batch_size]) for i in range(0, n, batch_size)]
    )  # n D
    figures: dict = {"test_images": n, "chance": CHANCE}
    figures["judge_on_real"] = _judge(classifier, images, test)
    figures["clip_caption_retrieval"] = {
        "top1": _caption_retrieval(image_embed, texts, test["captions"]),
        "chance": 1 / n,
    }

    x = to_model_range(images)
    round_trip = torch.cat([vq(part).sample for part in x.split(batch_size)]).add(1).div(2).clamp(0, 1)
    figures["vq_round_trip"] = {
        "psnr": _psnr(round_trip, images),
        "ssim": ssim_per_image(to_luma(round_trip), to_luma(images)).mean().item(),
        "judge": _judge(classifier, round_trip, test),
    }

    # eps-MSE with own vs another image's condition, same noise and timesteps for both
    latents = torch.cat([vq.encode(part).latents for part in x.split(batch_size)]) * vq.config.scaling_factor
    generator = torch.Generator().manual_seed(seed)
    conditions = {
        "image_tokens": lambda order: condition(image_tokens=tokens[order]),
        "caption": lambda order: condition(text=texts[order]),
    }
    other = torch.roll(torch.arange(n), 1)
    gains = {}
    for name, make in conditions.items():
        own_loss = shuffled_loss = 0.0
        for _ in range(noise_draws):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.randint(0, ldm.scheduler.config.num_train_timesteps, (n,), generator=generator)
            noisy = ldm.scheduler.add_noise(latents, noise, t)
            for order, which in ((torch.arange(n), "own"), (other, "shuffled")):
                context, pooled = make(order)
                eps = unet(noisy, t, encoder_hidden_states=context, class_labels=pooled).sample
                loss = F.mse_loss(eps, noise).item() / noise_draws
                if which == "own":
                    own_loss += loss
                else:
                    shuffled_loss += loss
        gains[name] = {
            "own": own_loss,
            "shuffled": shuffled_loss,
            "gain_pct": 100 * (shuffled_loss - own_loss) / own_loss,
        }
    figures["eps_mse"] = gains

    samples = {}
    null_context, null_pooled = condition.null(n)
    sampled = {
        "image_tokens": condition(image_tokens=tokens),
        "caption": condition(text=texts),
        "unconditional": (null_context, null_pooled),
    }
    for name, (context, pooled) in sampled.items():
        drawn = []
        for rows in torch.arange(n).split(batch_size):
            drawn.append(
                sample_images(
                    unet,
                    vq,
                    ldm.scheduler.config,
                    context[rows],
                    pooled[rows],
                    null_context[rows],
                    null_pooled[rows],
                    steps=steps,
                    guidance=1.0 if name == "unconditional" else guidance,
                    generator=torch.Generator().manual_seed(seed + 1),
                )
            )
        samples[name] = _judge(classifier, torch.cat(drawn), test)
    figures["samples"] = {"steps": steps, "guidance": guidance, **samples}
    return figures


def format_checks(figures: dict) -> str:
    """The figures as aligned lines, each with its chance level."""
    chance = figures["chance"]

    def judged(name: str, scores: dict) -> str:
        return (
            f"{name:<34} shape {100 * scores['shape']:5.1f}%   colour {100 * scores['color']:5.1f}%   "
            f"(chance {100 * chance['shape']:.1f}% / {100 * chance['color']:.1f}%)"
        )

    vq, eps, samples = figures["vq_round_trip"], figures["eps_mse"], figures["samples"]
    retrieval = figures["clip_caption_retrieval"]
    lines = [
        f"stand-in checks on {figures['test_images']} distinct test images",
        judged("judge on the real images", figures["judge_on_real"]),
        f"{'VQ round trip':<34} PSNR {vq['psnr']:.2f} dB   SSIM {vq['ssim']:.3f}",
        judged("judge on the VQ round trips", vq["judge"]),
        judged("samples from CLIP image tokens", samples["image_tokens"]),
        judged("samples from captions", samples["caption"]),
        judged("unconditional samples (control)", samples["unconditional"]),
        f"{'':<34} ({samples['steps']} DDIM steps, guidance {samples['guidance']:g})",
    ]
    for name, gain in eps.items():
        lines.append(
            f"{'eps-MSE, ' + name.replace('_', ' '):<34} own {gain['own']:.4f}   another image's "
            f"{gain['shuffled']:.4f}   gain {gain['gain_pct']:+.1f}%   (no use of the condition: 0%)"
        )
    lines.append(
        f"{'CLIP image -> caption retrieval':<34} top-1 {100 * retrieval['top1']:.1f}%   "
        f"(chance {100 * retrieval['chance']:.1f}%)"
    )
    return "\n".join(lines)

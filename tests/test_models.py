import math

import pytest
import torch

from lightning_fcae.models import (
    FCAE,
    MAE,
    FCAEOutput,
    VoxelDiscretizer,
    fcae_loss,
    mae_loss,
    model_size,
    patchify,
    random_masking,
    unpatchify,
)

V, P = 256, 16  # 16 patches of 16 voxels


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tiny models gain nothing from intra-op threads, and on a busy machine the thread pool's
    contention made the training tests ~20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_batch(b: int = 32, seed: int = 0) -> torch.Tensor:
    """Spatially smooth 'fMRI': sums of low-frequency sinusoids + noise, z-scored per voxel."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, V)
    x = 0.1 * torch.randn(b, V, generator=g)
    for _ in range(3):
        freq = 0.5 + 4 * torch.rand(b, 1, generator=g)
        phase = 2 * math.pi * torch.rand(b, 1, generator=g)
        x += (0.5 + torch.rand(b, 1, generator=g)) * torch.sin(2 * math.pi * freq * t + phase)
    return (x - x.mean(0)) / x.std(0)


def tiny_fcae(**kwargs) -> FCAE:
    torch.manual_seed(0)
    enc, reg, dec = model_size("tiny")
    return FCAE(V, enc, reg, dec, **kwargs)


def tiny_mae() -> MAE:
    torch.manual_seed(0)
    enc, _, dec = model_size("tiny")
    return MAE(V, enc, dec)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("n", "ratio"), [(16, 0.75), (16, 0.5), (10, 0.33), (4, 0.99), (4, 0.0)])
def test_random_masking_exact_counts_and_partition(n, ratio):
    ids_keep, ids_mask, ids_restore = random_masking(8, n, ratio, gen())
    n_keep = min(max(round(n * (1 - ratio)), 1), n - 1)
    assert ids_keep.shape == (8, n_keep) and ids_mask.shape == (8, n - n_keep)
    both = torch.cat([ids_keep, ids_mask], dim=1)
    assert torch.equal(both.sort(dim=1).values, torch.arange(n).expand(8, n))  # union = all, disjoint
    assert torch.equal(torch.gather(both, 1, ids_restore), torch.arange(n).expand(8, n))
    assert not torch.equal(ids_keep[0].sort().values, ids_keep[1].sort().values)  # per-sample masks


def test_patchify_roundtrip():
    x = torch.randn(3, V)
    patches = patchify(x, P)
    assert patches.shape == (3, V // P, P)
    assert torch.equal(patches[1, 2], x[1, 2 * P : 3 * P])
    assert torch.equal(unpatchify(patches), x)


def test_discretizer_known_values():
    d = VoxelDiscretizer(num_bins=4, clip=2.0)  # edges -2, -1, 0, 1, 2
    x = torch.tensor([-5.0, -2.0, -1.5, -1.0, -0.01, 0.0, 0.99, 1.0, 2.0, 7.0])
    assert d.encode(x).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert d.bin_centers.tolist() == [-1.5, -0.5, 0.5, 1.5]
    one_hot = torch.full((2, 4), -1e4)
    one_hot[0, 3] = one_hot[1, 0] = 0.0
    assert torch.allclose(d.decode(one_hot), torch.tensor([1.5, -1.5]))
    assert torch.allclose(d.decode(torch.zeros(4)), torch.tensor(0.0))  # uniform -> mean of centres
    default = VoxelDiscretizer()
    assert default.encode(torch.tensor([0.0, 0.1, -0.1, 2.99])).tolist() == [16, 16, 15, 31]


def test_fcae_shapes_and_masked_voxels_are_never_seen():
    model = tiny_fcae().eval()
    x = smooth_batch(4)
    out = model(x, 0.75, gen())
    b, n_mask = 4, 12
    assert out.pred.shape == (b, n_mask, P, 32)
    assert out.target_patches.shape == (b, n_mask, P)
    assert out.z_m.shape == out.z_m_target.shape == (b, n_mask, 64)
    assert torch.equal(
        out.target_patches, torch.gather(patchify(x, P), 1, out.ids_mask[..., None].expand(-1, -1, P))
    )

    # Changing only the masked voxels changes the target but neither z_m nor the prediction.
    x2 = patchify(x, P).clone()
    x2.scatter_(1, out.ids_mask[..., None].expand(-1, -1, P), torch.randn(b, n_mask, P))
    out2 = model(unpatchify(x2), 0.75, gen())
    assert torch.equal(out2.ids_mask, out.ids_mask)
    assert torch.allclose(out2.z_m, out.z_m) and torch.allclose(out2.pred, out.pred)
    assert not torch.allclose(out2.target_patches, out.target_patches)


def test_fcae_decoder_depends_on_visible_input_only_through_z_m():
    model = tiny_fcae().eval()
    x = smooth_batch(4)
    x_other = x.clone()
    x_other += torch.randn_like(x)  # changes the visible patches (and the masked ones)
    base, other = model(x, 0.75, gen()), model(x_other, 0.75, gen())
    assert not torch.allclose(base.z_m, other.z_m, atol=1e-4)  # the regressor does see Z_v ...

    # ... but with the regressor's output pinned, the prediction no longer depends on the input at all.
    handle = model.regressor.register_forward_hook(lambda mod, args, output: base.z_m)
    try:
        pinned = model(x_other, 0.75, gen())
    finally:
        handle.remove()
    assert torch.equal(pinned.pred, base.pred)
    assert torch.equal(model.decoder(base.z_m, base.ids_mask), base.pred)


def test_no_gradient_through_alignment_target():
    model = tiny_fcae()
    x = smooth_batch(4)
    out = model(x, 0.75, gen())
    # Would fail without torch.no_grad around the target branch.
    assert not out.z_m_target.requires_grad and out.z_m_target.grad_fn is None

    # Would fail without .detach() in the loss: a target that does require grad must receive none.
    leaf = out.z_m_target.clone().requires_grad_(True)
    probe = FCAEOutput(out.pred, out.target_patches, out.z_m, leaf, out.ids_keep, out.ids_mask)
    fcae_loss(probe, model.discretizer, lam=1.0)["loss"].backward()
    assert leaf.grad is None
    assert all(p.grad is not None for p in model.regressor.parameters())

    # Encoder gradients of the align loss equal those of a constant target: the encoder learns from
    # alignment only through the visible path (Z_v -> regressor), never by moving the target.
    model.zero_grad()
    fcae_loss(model(x, 0.75, gen()), model.discretizer, lam=1.0)["align"].backward()
    grads = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    out = model(x, 0.75, gen())
    const = FCAEOutput(
        out.pred, out.target_patches, out.z_m, out.z_m_target.clone(), out.ids_keep, out.ids_mask
    )
    fcae_loss(const, model.discretizer, lam=1.0)["align"].backward()
    for g, p in zip(grads, model.encoder.parameters(), strict=True):
        assert torch.allclose(g, p.grad)


def train(model, loss_fn, steps: int = 150) -> tuple[dict, dict]:
    x = smooth_batch(32)

    def evaluate():
        with torch.no_grad():
            return {k: v.item() for k, v in loss_fn(model(x, 0.5, gen(123))).items()}

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    g = gen(1)
    for _ in range(steps):
        loss = loss_fn(model(x, 0.5, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, evaluate()


@pytest.mark.parametrize("target", ["ce", "mse"])
def test_fcae_training_loss_falls(target):
    model = tiny_fcae(target=target)
    before, after = train(model, lambda out: fcae_loss(out, model.discretizer, lam=1.0))
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    assert after["rec"] < 0.9 * before["rec"], (before, after)


def test_mae_training_loss_falls():
    model = tiny_mae()
    before, after = train(model, mae_loss)
    assert after["loss"] < 0.7 * before["loss"], (before, after)


def test_mae_outputs():
    model = tiny_mae()
    x = smooth_batch(4)
    out = model(x, 0.75, gen())
    assert out.pred.shape == out.target.shape == (4, V // P, P)
    assert torch.equal(out.target, patchify(x, P))
    assert out.mask.sum(dim=1).tolist() == [12.0] * 4
    assert torch.equal(out.mask.gather(1, out.ids_mask), torch.ones(4, 12))


def test_parameter_counts_sum_to_total():
    for model in (tiny_fcae(), tiny_fcae(target="mse"), tiny_mae()):
        counts = model.parameter_counts()
        total = sum(p.numel() for p in model.parameters())
        assert counts["total"] == total
        assert sum(v for k, v in counts.items() if k != "total") == total


def test_reconstruct_keeps_visible_voxels():
    model = tiny_fcae().eval()
    x = smooth_batch(2)
    recon, mask = model.reconstruct(x, 0.75, gen())
    assert recon.shape == x.shape and mask.shape == (2, V // P)
    visible = (mask == 0).repeat_interleave(P, dim=1)
    assert torch.equal(recon[visible], x[visible])
    assert recon[~visible].abs().max() <= 3.0  # expected values stay within the bin range


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_bf16_autocast_and_checkpointing(grad_checkpointing):
    x = smooth_batch(4)
    fcae, mae = tiny_fcae(grad_checkpointing=grad_checkpointing), tiny_mae()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [
            fcae_loss(fcae(x, 0.75, gen()), fcae.discretizer, 1.0)["loss"],
            mae_loss(mae(x, 0.75, gen()))["loss"],
        ]
    for loss in losses:
        assert torch.isfinite(loss)
        loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in fcae.encoder.parameters())


def test_model_sizes_and_padding_check():
    enc, reg, dec = model_size("base")
    assert (enc.embed_dim, enc.depth, enc.num_heads, reg.depth, dec.embed_dim) == (768, 12, 12, 2, 384)
    assert model_size("large")[0].mlp_ratio == 1.0
    with pytest.raises(ValueError):
        model_size("huge")
    with pytest.raises(ValueError):
        FCAE(V + 1, *model_size("tiny"))

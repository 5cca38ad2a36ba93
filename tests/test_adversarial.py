"""The decoder's adversarial term (pipeline/tokenizer/adversarial.py) and its place in the decoder's training:
the losses and VQGAN's adaptive weight by their definitions, nothing changes before `start_step`, the
discriminator is checkpointed (resume == uninterrupted) and a run is byte-stable."""

from __future__ import annotations

import pytest
import torch
from test_decoder import CHECKPOINT, load, params, train, write_inputs

from pipeline.params import AdversarialParams
from pipeline.tokenizer.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)

ON = dict(
    weight=0.5,
    adaptive=True,
    start_step=0,
    loss="hinge",
    lr=2e-4,
    beta1=0.5,
    beta2=0.9,
    channels=8,
    layers=2,
    spectral_norm=False,
    r1_gamma=0.0,
)


def adversarial(**overrides) -> dict:
    return AdversarialParams(**{**ON, **overrides}).model_dump()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layers, side", [(1, 14), (2, 6), (3, 2)])
def test_patch_discriminator_gives_a_map_of_patch_logits(layers, side):
    for spectral_norm in (False, True):
        d = PatchDiscriminator(channels=8, layers=layers, spectral_norm=spectral_norm)
        assert d(torch.rand(2, 3, 32, 32)).shape == (2, 1, side, side)


def test_hinge_and_non_saturating_losses_by_their_definitions():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    assert discriminator_loss(real, fake, "hinge") == pytest.approx(0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3))
    assert generator_loss(fake, "hinge") == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    softplus = torch.nn.functional.softplus
    assert discriminator_loss(real, fake, "non_saturating") == pytest.approx(
        0.5 * (softplus(-real).mean() + softplus(fake).mean()).item()
    )
    assert generator_loss(fake, "non_saturating") == pytest.approx(softplus(-fake).mean().item())


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    last = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    rec, adv = (x @ last).pow(2).mean(), -(x @ last).sin().mean()
    g_rec, g_adv = (
        torch.autograd.grad(rec, last, retain_graph=True)[0],
        torch.autograd.grad(adv, last, retain_graph=True)[0],
    )
    expected = g_rec.norm() / (g_adv.norm() + 1e-4)
    assert adaptive_weight(rec, adv, last).item() == pytest.approx(expected.item())
    assert not adaptive_weight(rec, adv, last).requires_grad


def test_r1_penalty_is_half_gamma_times_the_squared_gradient_norm():
    d = PatchDiscriminator(channels=8, layers=1)
    real = torch.rand(3, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(d(real).sum(), real)
    expected = 0.5 * 10.0 * grad.pow(2).flatten(1).sum(1).mean()
    assert r1_penalty(d, real, 10.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_nothing_changes_before_the_start_step(tmp_path):
    inputs = load(write_inputs(tmp_path))
    plain = train(params(epochs=1), inputs, tmp_path / "plain")
    steps = -(-len(inputs.train_tokens) // 8)
    late = train(params(epochs=1, adversarial=adversarial(start_step=steps)), inputs, tmp_path / "late")
    assert same(weights(plain.model), weights(late.model))
    assert late.history[0]["d_loss"] == 0.0


@pytest.mark.parametrize("variant", [{}, {"adaptive": False, "loss": "non_saturating", "r1_gamma": 1.0}])
def test_the_adversarial_term_trains_the_decoder_and_the_discriminator(tmp_path, variant):
    inputs = load(write_inputs(tmp_path))
    plain = train(params(epochs=1), inputs, tmp_path / "plain")
    run = train(params(epochs=1, adversarial=adversarial(**variant)), inputs, tmp_path / "gan")
    assert not same(weights(plain.model), weights(run.model))
    assert run.history[0]["d_loss"] > 0 and run.history[0]["adversarial_weight"] > 0
    d0 = PatchDiscriminator(8, 2)
    assert not same(weights(d0), run.extras["adversary"].discriminator.state_dict())


def test_resume_with_the_discriminator_matches_the_uninterrupted_run(tmp_path):
    inputs = load(write_inputs(tmp_path))
    p = params(epochs=2, adversarial=adversarial(start_step=1))
    full = train(p, inputs, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(p, inputs, tmp_path / "resumed", on_epoch_end=kill_after_first_epoch)
    saved = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert set(saved["extras"]["adversary"]) == {"discriminator", "optimizer", "scaler"}
    resumed = train(p, inputs, tmp_path / "resumed")
    assert same(weights(full.model), weights(resumed.model))
    d_full, d_resumed = (r.extras["adversary"].discriminator.state_dict() for r in (full, resumed))
    assert same(d_full, d_resumed)
    assert [h["d_loss"] for h in resumed.history] == [h["d_loss"] for h in full.history]


def test_two_runs_are_identical(tmp_path):
    inputs = load(write_inputs(tmp_path))
    p = params(epochs=1, adversarial=adversarial())
    a, b = (train(p, inputs, tmp_path / name) for name in ("a", "b"))
    assert same(weights(a.model), weights(b.model)) and a.history[0]["d_loss"] == b.history[0]["d_loss"]

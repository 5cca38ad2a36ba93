"""The decoder's adversarial term, VQGAN-style (Esser et al. 2021; CompVis/taming-transformers' loss module).

The codebook is fixed (a frozen CNN + k-means), so, as in SeQ-GAN (arXiv 2212.03185), only the decoder learns
detail: a PatchGAN discriminator trained from scratch tells real 32x32 images from reconstructions patch by
patch, and the decoder gets `weight` x lambda x its generator loss on top of the pixel + perceptual loss, with
lambda VQGAN's adaptive weight: the ratio of the gradient norms of the reconstruction loss and of the
generator loss at the decoder's last layer (so the adversarial term never swamps the reconstruction), or 1
(`adaptive: false`). Both start at `start_step`, before which the decoder trains exactly as without them.

- `PatchDiscriminator`: the pix2pix / taming NLayerDiscriminator sized for 32x32 (4x4 convolutions; `layers`
  stride-2 ones, then a stride-1 one and a 1-channel logit map), GroupNorm, optional spectral norm.
- `generator_loss` / `discriminator_loss`: hinge (VQGAN's default) or non-saturating (softplus).
- `adaptive_weight`: lambda, detached, clamped to [0, 1e4] as in taming-transformers.
- `r1_penalty`: gamma / 2 x E ||grad D(real)||^2 (Mescheder et al. 2018), an optional stabiliser.
- `Adversary`: the discriminator with its own AdamW, gradient scaler and learning rate, the one object the
  decoder's training loop asks for the generator's term and a discriminator step; its state is part of the
  decoder's checkpoint (`state_dict` / `load_state_dict`), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.runtime import adamw, autocast, grad_scaler
from pipeline.core.training import set_lr, train_step
from pipeline.params import AdversarialParams

MAX_ADAPTIVE_WEIGHT = 1e4  # taming-transformers' clamp


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class PatchDiscriminator(nn.Module):
    """(N, 3, 32, 32) images in [0, 1] -> (N, 1, h, w) real/fake logits, one per overlapping patch: `layers`
    1, 2, 3 give a 14x14, 6x6, 2x2 map of patches 16, 34, 70 pixels wide (3 is pix2pix's 70x70 PatchGAN)."""

    def __init__(self, channels: int = 64, layers: int = 3, spectral_norm: bool = False):
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        blocks: list[nn.Module] = [wrap(nn.Conv2d(3, channels, 4, 2, 1)), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [wrap(nn.Conv2d(width, out, 4, stride, 1)), nn.GroupNorm(_groups(out), out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(wrap(nn.Conv2d(width, 1, 4, 1, 1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)  # centred inputs, as the decoder's targets are in [0, 1]


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """What the decoder minimises to make D call its reconstructions real."""
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()  # non-saturating: -log sigmoid(D(fake))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor):
    """VQGAN's lambda: ||d rec / d last|| / (||d adv / d last|| + 1e-4), detached and clamped to [0, 1e4]."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    return weight.clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, gamma: float) -> torch.Tensor:
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(1).mean()


class Adversary:
    """The discriminator, its optimizer and scaler, and when and how much the adversarial term counts."""

    def __init__(self, p: AdversarialParams, device: torch.device, precision: str, seed: int):
        self.p, self.device, self.precision = p, device, precision
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's RNG untouched
            torch.manual_seed(seed)
            self.discriminator = PatchDiscriminator(p.channels, p.layers, p.spectral_norm).to(device)
        self.optimizer = adamw(
            self.discriminator.parameters(), device, lr=p.lr, betas=(p.beta1, p.beta2), weight_decay=0.0
        )
        self.scaler = grad_scaler(device, precision)
        self.last_weight = 0.0  # lambda x weight of the latest generator term (logged)

    def active(self, step: int) -> bool:
        return step >= self.p.start_step

    def generator_term(
        self, reconstruction_loss: torch.Tensor, fake: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """`weight` x lambda x the generator loss of `fake` (the decoder's output, with its graph)."""
        for q in self.discriminator.parameters():
            q.requires_grad_(False)  # this term trains the decoder only
        g_loss = generator_loss(self.discriminator(fake).float(), self.p.loss)
        for q in self.discriminator.parameters():
            q.requires_grad_(True)
        lam = adaptive_weight(reconstruction_loss, g_loss, last_layer) if self.p.adaptive else 1.0
        self.last_weight = float(self.p.weight * lam)
        return self.p.weight * lam * g_loss

    def step(self, real: torch.Tensor, fake: torch.Tensor, lr_scale: float) -> torch.Tensor:
        """One discriminator update on `real` images and detached reconstructions `fake`; its detached loss."""
        set_lr(self.optimizer, self.p.lr * lr_scale)

        def loss_of(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
            d = self.discriminator
            loss = discriminator_loss(d(real).float(), d(fake).float(), self.p.loss)
            if self.p.r1_gamma > 0:
                with autocast(self.device, "fp32"):
                    loss = loss + r1_penalty(d, real.float(), self.p.r1_gamma)
            return loss

        return train_step(loss_of, (real, fake.detach()), self.optimizer, self.scaler, self.device, self.precision)

    def state_dict(self) -> dict:
        return {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def decoder_loss_with(adversary: Adversary | None, reconstruction_loss: Callable) -> Callable:
    """(output, target, last_layer, step) -> the decoder's loss: reconstruction, plus the adversarial term from
    `adversary.start_step` on (None: reconstruction alone)."""

    def loss(out: torch.Tensor, target: torch.Tensor, last_layer: torch.Tensor, step: int) -> torch.Tensor:
        rec = reconstruction_loss(out, target)
        if adversary is None or not adversary.active(step):
            return rec
        return rec + adversary.generator_term(rec, out, last_layer)

    return loss

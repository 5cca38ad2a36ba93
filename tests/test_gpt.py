"""The GPT model: KV cache == full re-run, sampling controls, attention, parameter groups."""

from __future__ import annotations

import pytest
import torch

from pipeline.gpt.model import GPT, GPTConfig, inverse_cdf_sample, sample_logits, training_inputs

K = 24


def make(conditional: bool, pos_emb: str = "2d", attn_impl: str = "sdpa", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(k=K, grid_h=3, grid_w=4, n_classes=10, conditional=conditional, n_layer=2, n_head=2,
                    n_embd=32, dropout=0.1, pos_emb=pos_emb)
    model = GPT(cfg, attn_impl).eval()
    with torch.no_grad():  # random, larger weights so the logits are far from uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("conditional, pos_emb", [(True, "2d"), (False, "2d"), (True, "1d"), (False, "1d")])
def test_kv_cache_matches_full_rerun_at_every_step(conditional, pos_emb):
    model = make(conditional, pos_emb)
    cfg = model.cfg
    seq = cfg.prefix(torch.arange(5) % 10, 5, "cpu")[:, None]
    with torch.no_grad():
        _, _, past = model(seq, use_cache=True)
        step_in = seq
        for t in range(cfg.block_size):
            full, _, _ = model(seq)
            if t:
                cached, _, past = model(step_in, past_kv=past, use_cache=True)
            else:
                cached, _, _ = model(seq, use_cache=True)
            torch.testing.assert_close(cached[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)
            nxt = full[:, -1, :K].argmax(-1)
            assert torch.equal(cached[:, -1, :K].argmax(-1), nxt)
            step_in = nxt[:, None]
            seq = torch.cat([seq, step_in], 1)


def test_cache_with_several_new_tokens_matches_full_run():
    model = make(True)
    x = torch.randint(0, K, (3, model.cfg.block_size))
    with torch.no_grad():
        full, _, _ = model(x)
        _, _, past = model(x[:, :5], use_cache=True)
        rest, _, _ = model(x[:, 5:], past_kv=past, use_cache=True)
    torch.testing.assert_close(rest, full[:, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conditional", [True, False])
@pytest.mark.parametrize(
    "sampling",
    [
        dict(temperature=0.0),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.8, top_k=5, top_p=0.9, seed=4),
        dict(temperature=1.0, cfg_scale=3.0, seed=5),
    ],
)
def test_generate_with_cache_gives_the_same_tokens_as_without(conditional, sampling):
    model = make(conditional)
    labels = torch.arange(6) % 10 if conditional else None
    cached = model.generate(6, labels, use_cache=True, **sampling)
    full = model.generate(6, labels, use_cache=False, **sampling)
    assert cached.shape == (6, model.cfg.block_size)
    assert torch.equal(cached, full)
    assert int(cached.max()) < K  # never a class/start/null token


def test_sampling_is_seeded_and_conditioned():
    model = make(True)
    labels = torch.tensor([0, 0, 7, 7])
    a = model.generate(4, labels, seed=1)
    assert torch.equal(a, model.generate(4, labels, seed=1))
    assert not torch.equal(a, model.generate(4, labels, seed=2))
    greedy = model.generate(4, labels, temperature=0.0)
    assert torch.equal(greedy[0], greedy[1]) and not torch.equal(greedy[0], greedy[2])
    with pytest.raises(ValueError, match="needs labels"):
        model.generate(2)


@torch.no_grad()
def test_guidance_follows_the_formula_at_every_step():
    """Greedy guided sampling picks argmax(uncond + s * (cond - uncond)) at every step, where cond is
    the model's logits after the class token and uncond after the null class, on the same codes."""
    model, scale = make(True), 4.0
    with torch.no_grad():  # larger weights: peaked, class-dependent logits
        model.wte.weight.mul_(20)
    labels = torch.tensor([0, 3, 7, 9])
    guided = model.generate(4, labels, temperature=0.0, cfg_scale=scale)
    cfg = model.cfg
    cond_in = training_inputs(guided, cfg.prefix(labels, 4, "cpu"))
    uncond_in = training_inputs(guided, cfg.prefix(None, 4, "cpu"))
    cond, uncond = (model(x)[0][..., : cfg.k].float() for x in (cond_in, uncond_in))
    assert torch.equal(guided, (uncond + scale * (cond - uncond)).argmax(-1))
    swapped = (cond + scale * (uncond - cond)).argmax(-1)  # the formula with cond and uncond exchanged
    assert not torch.equal(guided, swapped)  # so the check above can tell them apart


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, 1.0, 2, None, g).tolist()) == {0, 1}
    assert set(sample_logits(logits, 1.0, None, 0.6, g).tolist()) == {0, 1}  # 0.5 < 0.6 needs the 2nd
    assert set(sample_logits(logits, 1.0, None, 0.45, g).tolist()) == {0}
    assert set(sample_logits(logits, 1.0, None, None, g).tolist()) == {0, 1, 2, 3}


def test_inverse_cdf_sampling_follows_the_weights_and_never_draws_a_zero():
    weights = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05, 0.0]]).repeat(40_000, 1) * 3.0  # unnormalised
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(inverse_cdf_sample(weights, g), minlength=6).double()
    assert counts[1] == counts[5] == 0  # zero weight, incl. the last index
    # 40,000 draws: the standard error of a frequency is <= 0.0025, so 0.01 is 4 sigma
    torch.testing.assert_close(counts / counts.sum(), (weights[0] / weights[0].sum()).double(), rtol=0, atol=0.01)
    only_last = torch.tensor([[0.0, 0.0, 2.0]]).repeat(1000, 1)
    assert inverse_cdf_sample(only_last, g).eq(2).all()


def test_bf16_autocast_attention_on_cpu_matches_fp32_and_trains():
    """The CPU bf16 path runs SDPA in fp32 (its bf16 backward is slow there): same result as the
    explicit reference attention under the same autocast, gradients reach the attention weights."""
    x = torch.randint(0, K, (4, 12))
    out = {}
    for impl in ("sdpa", "reference"):
        model = make(True, attn_impl=impl)  # same seed -> same weights; eval: no dropout, gradients still flow
        with torch.autocast("cpu", torch.bfloat16):
            logits, loss, _ = model(x, x)
        loss.backward()
        out[impl] = (logits.float(), model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(out["sdpa"][0], out["reference"][0], rtol=0.05, atol=0.05)
    assert out["sdpa"][1].abs().sum() > 0
    torch.testing.assert_close(out["sdpa"][1], out["reference"][1], rtol=0.1, atol=0.01)


def test_sdpa_and_reference_attention_agree():
    x = torch.randint(0, K, (4, 12))
    sdpa, ref = make(True, attn_impl="sdpa"), make(True, attn_impl="reference")
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
        _, _, past = ref(x[:, :4], use_cache=True)
        torch.testing.assert_close(ref(x[:, 4:], past_kv=past)[0], ref(x)[0][:, 4:], rtol=1e-5, atol=1e-5)


def test_causal_future_tokens_do_not_change_the_past():
    model = make(False)
    x = torch.randint(0, K, (2, 12))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % K
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0][:, :7], model(y)[0][:, :7])


def test_vocabulary_inputs_and_weight_decay_groups():
    cond, uncond = make(True), make(False)
    assert cond.cfg.vocab_size == K + 11 and cond.cfg.null_token == K + 10
    assert uncond.cfg.vocab_size == K + 1 and uncond.cfg.null_token == K
    codes = torch.tensor([[5, 6, 7]])
    assert training_inputs(codes, cond.cfg.prefix(torch.tensor([3]), 1, "cpu")).tolist() == [[K + 3, 5, 6]]
    assert training_inputs(codes, uncond.cfg.prefix(None, 1, "cpu")).tolist() == [[K, 5, 6]]
    decay, no_decay = cond.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(cond.parameters()))  # tied embedding counted once
    assert cond.head.weight is cond.wte.weight
    with pytest.raises(ValueError, match="exceeds block size"):
        cond(torch.zeros(1, 13, dtype=torch.long))

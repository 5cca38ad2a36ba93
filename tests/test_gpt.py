"""The GPT model: KV cache == full re-run, sampling controls, attention variants, parameter groups."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from sample_world import gpt_config

from pipeline.gpt import model as gpt
from pipeline.gpt.attention_masks import ATTENTIONS, block_mask
from pipeline.gpt.model import GPT, inverse_cdf_sample, load_gpt, sample_logits, save_gpt, training_inputs
from pipeline.gpt.rotary import Rotary2D

K = 24
# every attention pattern, and grouped-query attention (one key/value head for the two query heads)
VARIANTS = {
    "full": {},
    "local": dict(attention="local", window=3),
    "axial": dict(attention="axial"),
    "strided": dict(attention="strided"),
    "gqa": dict(n_kv_head=1),
}
POS_EMBS = ["1d", "2d", "rope2d", "none"]
variants = pytest.mark.parametrize("variant", list(VARIANTS))
pos_embs = pytest.mark.parametrize("pos_emb", POS_EMBS)


def make(
    conditional: bool, pos_emb: str = "2d", attn_impl: str = "sdpa", seed: int = 0, variant: str = "full", **config
) -> GPT:
    torch.manual_seed(seed)
    shape = dict(grid_h=3, grid_w=4, n_layer=2, n_embd=32, dropout=0.1, pos_emb=pos_emb)
    cfg = replace(gpt_config(conditional, K), **{**shape, **VARIANTS[variant], **config})
    model = GPT(cfg, attn_impl).eval()
    with torch.no_grad():  # random, larger weights so the logits are far from uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@variants
@pos_embs
@pytest.mark.parametrize("conditional", [True, False])
def test_kv_cache_matches_full_rerun_at_every_step(conditional, pos_emb, variant):
    model = make(conditional, pos_emb, variant=variant)
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


@variants
@pos_embs
def test_cache_with_several_new_tokens_matches_full_run(variant, pos_emb):
    model = make(True, pos_emb, variant=variant)
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
@variants
def test_generate_with_cache_gives_the_same_tokens_as_without(conditional, sampling, variant):
    model = make(conditional, variant=variant)
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


@variants
@pos_embs
def test_sdpa_and_reference_attention_agree(variant, pos_emb):
    x = torch.randint(0, K, (4, 12))
    sdpa, ref = (make(True, pos_emb, impl, variant=variant) for impl in ("sdpa", "reference"))
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
        _, _, past = ref(x[:, :4], use_cache=True)
        torch.testing.assert_close(ref(x[:, 4:], past_kv=past)[0], ref(x)[0][:, 4:], rtol=1e-5, atol=1e-5)


@variants
@pos_embs
def test_causal_future_tokens_do_not_change_the_past(variant, pos_emb):
    model = make(False, pos_emb, variant=variant)
    x = torch.randint(0, K, (2, 12))
    with torch.no_grad():
        logits = model(x)[0]
        for t in range(1, 12):  # every slot from t on changed: no earlier logit moves, slot t's does
            y = x.clone()
            y[:, t:] = (y[:, t:] + 1) % K
            changed = model(y)[0]
            assert torch.equal(changed[:, :t], logits[:, :t]), t
            assert not torch.allclose(changed[:, t], logits[:, t]), t


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


# ---- attention variants: masks, grouped-query attention, rotary embeddings, the unchanged default ----


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("layer", [0, 1])
def test_every_pattern_is_causal_and_sees_the_prefix_slot(attention, layer):
    mask = block_mask(attention, 3, 4, 2, layer)
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert torch.equal(mask & causal, mask) and mask.diagonal().all()
    assert mask[:, 0].all()  # the class or start token reaches every slot in one layer


def test_patterns_are_the_documented_ones():
    W = 4  # 3 x 4 grid; slot 6 is row 1, column 2
    seen = {a: [block_mask(a, 3, W, 2, layer)[6].nonzero().flatten().tolist() for layer in (0, 1)] for a in ATTENTIONS}
    assert seen["full"] == [list(range(7))] * 2
    assert seen["local"] == [[0, 5, 6]] * 2  # window 2: codes 4 and 5
    # slot k holds code k - 1: slot 6 predicts code 6 (row 1, column 2) and holds code 5
    assert seen["axial"] == [[0, 5, 6], [0, 3, 6]]  # codes 4, 5 (its row, to the left); code 2 (straight above)
    assert seen["strided"] == [[0, 3, 4, 5, 6], [0, 3, 6]]  # the W latest codes 2..5; every W-th code back
    reach = {a: (block_mask(a, 3, W, 2, 1).float() @ block_mask(a, 3, W, 2, 0).float()) > 0 for a in ATTENTIONS}
    assert torch.equal(reach["strided"], reach["full"])  # two strided layers reach every earlier slot
    assert not reach["axial"][6, 4]  # axial never reaches up and to the right (slot 4 holds code 3: row 0, column 3)


@variants
def test_each_logit_depends_on_exactly_the_slots_its_layers_masks_reach(variant):
    """The gradient of slot t's logits w.r.t. the input embeddings is non-zero exactly where the
    product of the two layers' masks reaches from t (residual paths included: masks hold the diagonal)."""
    model = make(True, variant=variant)
    cfg = model.cfg
    masks = [block_mask(cfg.attention, cfg.grid_h, cfg.grid_w, cfg.window, layer).float() for layer in (0, 1)]
    reach = (masks[1] @ masks[0]) > 0
    emb = []
    model.wte.register_forward_hook(lambda m, i, out: emb.append(out.requires_grad_()) or out)
    x = torch.randint(0, K, (1, 12))
    logits = model(x)[0]
    for t in range(12):
        (grad,) = torch.autograd.grad(logits[0, t].sum(), emb[0], retain_graph=True)
        assert torch.equal(grad[0].abs().sum(-1) > 0, reach[t]), t


def record_sdpa(monkeypatch) -> list[tuple]:
    """(mask, causal) of every SDPA call from now on."""
    calls, sdpa = [], gpt.sdpa

    def recorded(q, k, v, mask, dropout_p, causal):
        calls.append((mask, causal))
        return sdpa(q, k, v, mask, dropout_p, causal)

    monkeypatch.setattr(gpt, "sdpa", recorded)
    return calls


def test_masks_are_built_once_and_sliced_by_absolute_position(monkeypatch):
    model = make(True, variant="axial")
    monkeypatch.setattr(gpt, "block_mask", lambda *args: pytest.fail("a mask was rebuilt in a forward"))
    calls = record_sdpa(monkeypatch)
    x = torch.randint(0, K, (2, 12))
    with torch.no_grad():
        model(x)
        model(x)
        _, _, past = model(x[:, :5], use_cache=True)
        model(x[:, 5:6], past_kv=past, use_cache=True)
    layers = [block.attn.mask for block in model.blocks]
    for i, (mask, _) in enumerate(calls):  # views of the layer's own buffer, never a new tensor
        assert mask.untyped_storage().data_ptr() == layers[i % 2].untyped_storage().data_ptr()
    assert torch.equal(calls[-2][0], layers[0][5:6, :6]) and torch.equal(calls[-1][0], layers[1][5:6, :6])


def test_full_attention_keeps_the_mask_free_sdpa_paths(monkeypatch):
    model, calls = make(True), record_sdpa(monkeypatch)
    x = torch.randint(0, K, (2, 12))
    with torch.no_grad():
        _, _, past = model(x[:, :5], use_cache=True)
        model(x[:, 5:6], past_kv=past, use_cache=True)
    assert calls == [(None, True)] * 2 + [(None, False)] * 2  # is_causal without a cache; one query: no mask


def minGPT_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The default model's computation written out from its state dict: 2d positions, causal
    softmax(QK^T / sqrt(d))V over [q | k | v] heads, pre-LayerNorm blocks, tied head."""
    sd, cfg = model.state_dict(), model.cfg
    (B, T), C, H = idx.shape, cfg.n_embd, cfg.n_head
    pos = torch.arange(T)
    x = sd["wte.weight"][idx] + sd["row_emb"][pos // cfg.grid_w] + sd["col_emb"][pos % cfg.grid_w]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg.n_layer):
        w = {name.removeprefix(f"blocks.{i}."): t for name, t in sd.items() if name.startswith(f"blocks.{i}.")}
        h = torch.nn.functional.layer_norm(x, (C,), w["ln1.weight"], w["ln1.bias"])
        q, k, v = (h @ w["attn.qkv.weight"].T + w["attn.qkv.bias"]).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) / (C // H) ** 0.5).masked_fill(future, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, C) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
        h = torch.nn.functional.layer_norm(x, (C,), w["ln2.weight"], w["ln2.bias"])
        h = torch.nn.functional.gelu(h @ w["mlp.0.weight"].T + w["mlp.0.bias"])
        x = x + h @ w["mlp.2.weight"].T + w["mlp.2.bias"]
    return torch.nn.functional.layer_norm(x, (C,), sd["ln_f.weight"], sd["ln_f.bias"]) @ sd["wte.weight"].T


def test_default_is_the_unchanged_full_attention():
    """The defaults are full attention with as many key/value heads as query heads: the same parameter
    names and shapes as before the variants existed, and the same computation."""
    model = make(True, n_layer=1)
    assert (model.cfg.attention, model.cfg.n_kv_head, model.cfg.kv_heads) == ("full", None, 2)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes == {
        "row_emb": (3, 32),
        "col_emb": (4, 32),
        "wte.weight": (K + 11, 32),
        "head.weight": (K + 11, 32),
        "blocks.0.ln1.weight": (32,),
        "blocks.0.ln1.bias": (32,),
        "blocks.0.ln2.weight": (32,),
        "blocks.0.ln2.bias": (32,),
        "blocks.0.attn.qkv.weight": (96, 32),
        "blocks.0.attn.qkv.bias": (96,),
        "blocks.0.attn.proj.weight": (32, 32),
        "blocks.0.attn.proj.bias": (32,),
        "blocks.0.mlp.0.weight": (128, 32),
        "blocks.0.mlp.0.bias": (128,),
        "blocks.0.mlp.2.weight": (32, 128),
        "blocks.0.mlp.2.bias": (32,),
        "ln_f.weight": (32,),
        "ln_f.bias": (32,),
    }
    x = torch.randint(0, K, (3, 12))
    for impl in ("sdpa", "reference"):
        model = make(True, attn_impl=impl)
        with torch.no_grad():
            torch.testing.assert_close(model(x)[0], minGPT_logits(model, x), rtol=1e-5, atol=1e-5)


def test_flops_per_token_is_the_dense_estimate_for_every_pattern():
    C, L, V, T = 32, 2, K + 11, 12
    dense = 6 * (12 * L * C**2 + V * C) + 12 * L * C * T
    assert {make(True, variant=v).cfg.flops_per_token for v in VARIANTS if v != "gqa"} == {dense}
    gqa = make(True, variant="gqa").cfg.flops_per_token  # keys and values at half the width: 2 * C * C/2 less per layer
    assert gqa == dense - 6 * L * 2 * C * (C // 2)


def test_grouped_query_attention_caches_fewer_heads_and_is_mha_with_shared_key_values():
    mha, gqa = make(True), make(True, variant="gqa")
    C, kv = 32, 16  # n_head 2 -> one key/value head of 16 dims
    assert gqa.blocks[0].attn.qkv.weight.shape == (C + 2 * kv, C)
    assert mha.num_params() - gqa.num_params() == 2 * 2 * (C - kv) * (C + 1)  # per layer: k and v, weight + bias
    x = torch.randint(0, K, (3, 7))
    with torch.no_grad():
        assert gqa(x, use_cache=True)[2][0][0].shape == (3, 1, 7, kv)
        assert mha(x, use_cache=True)[2][0][0].shape == (3, 2, 7, kv)
    # 4 query heads over 2 key/value heads: the same as multi-head attention whose heads 0, 1 share
    # key/value head 0 and heads 2, 3 head 1
    grouped = make(True, n_head=4, n_kv_head=2)
    plain = make(True, n_head=4)
    state = grouped.state_dict()
    for i in range(2):
        for kind in ("weight", "bias"):
            q, k, v = state[f"blocks.{i}.attn.qkv.{kind}"].split([C, C // 2, C // 2])
            expand = lambda t: t.unflatten(0, (2, C // 4)).repeat_interleave(2, 0).flatten(0, 1)  # noqa: E731
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([q, expand(k), expand(v)])
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], grouped(x)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(make(True, n_kv_head=2)(x)[0], make(True)(x)[0])  # n_kv_head == n_head: plain MHA


def test_rotary_scores_depend_on_the_row_and_column_offsets_only():
    rotary = Rotary2D(3, 4, 8)
    q, k = torch.randn(2, 1, 1, 1, 8).expand(2, 1, 1, 12, 8)
    rq, rk = rotary(q, 0)[0, 0], rotary(k, 0)[0, 0]
    scores = rq @ rk.T  # [a, b]: query at slot a, key at slot b
    torch.testing.assert_close(scores[0, 6], scores[5, 11])  # offset (+1 row, +2 columns) from (0,0) and (1,1)
    torch.testing.assert_close(scores[4, 2], scores[8, 6])  # offset (-1 row, +2 columns)
    assert not torch.allclose(scores[0, 6], scores[0, 9])  # other offsets, other scores
    torch.testing.assert_close(rq.norm(dim=-1), q[0, 0, 0].norm(dim=-1).expand(12))  # a rotation
    torch.testing.assert_close(rotary(q[:, :, 5:7], 5), rotary(q, 0)[:, :, 5:7])  # by absolute slot


def test_saved_variant_and_model_saved_before_the_variants_load(tmp_path):
    x = torch.randint(0, K, (2, 12))
    for name, model in {"old": make(True), "variant": make(True, "rope2d", variant="strided", n_kv_head=1)}.items():
        save_gpt(model, tmp_path / name)
        if name == "old":  # a config.json written before attention, window and n_kv_head existed
            path = tmp_path / name / "config.json"
            config = json.loads(path.read_text())
            new_keys = ("attention", "window", "n_kv_head")
            config["model"] = {k: v for k, v in config["model"].items() if k not in new_keys}
            path.write_text(json.dumps(config))
        loaded = load_gpt(tmp_path / name)
        assert loaded.cfg == model.cfg
        with torch.no_grad():
            assert torch.equal(loaded(x)[0], model(x)[0])


def test_invalid_variants_are_rejected():
    with pytest.raises(ValueError, match="unknown attention 'sparse'"):
        make(True, attention="sparse")
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        make(True, n_kv_head=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        make(True, "rope2d", n_embd=12)  # head width 6
    with pytest.raises(ValueError, match="unknown pos_emb"):
        make(True, "3d")

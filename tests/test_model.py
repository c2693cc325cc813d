"""budgetlm.model: shapes, loss, causality, generation, masking, checkpointing, every option."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from budgetlm.config import ModelConfig
from budgetlm.errors import UserError
from budgetlm.model import GPT, BertMLM, build_model, mlm_mask, n_params


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(n_layer=2, n_head=2, d_model=16, vocab_size=37, seq_len=12)
    base.update(kw)
    return ModelConfig(**base)


def _tokens(cfg: ModelConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(cfg.vocab_size, (batch, cfg.seq_len), generator=g)


OPTIONS = [
    {},
    {"positions": "rope"},
    {"norm": "rmsnorm"},
    {"mlp": "swiglu"},
    {"mlp": "relu"},
    {"attention": "eager"},
    {"bias": False},
    {"tie_embeddings": False},
    {"d_head": 6, "d_ff": 24},
    {"dropout": 0.1},
    {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False, "d_head": 10},
]


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_option_runs_forward_and_backward(family: str, opts: dict) -> None:
    cfg = _cfg(family=family, **opts)
    model = build_model(cfg)
    idx = _tokens(cfg)
    logits, loss = model(idx, idx)
    assert logits.shape == (3, cfg.seq_len, cfg.vocab_size)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_forward_returns_logits_without_targets_and_tuple_with() -> None:
    for family, cls in (("gpt", GPT), ("bert", BertMLM)):
        cfg = _cfg(family=family)
        model = build_model(cfg)
        assert isinstance(model, cls)
        idx = _tokens(cfg, batch=2)
        logits = model(idx)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, cfg.seq_len, 37)
        out = model(idx, idx)
        assert isinstance(out, tuple) and out[1].ndim == 0


def test_initial_loss_is_near_log_vocab() -> None:
    cfg = _cfg(vocab_size=64)
    _, loss = build_model(cfg)(_tokens(cfg), _tokens(cfg, seed=1))
    assert abs(loss.item() - math.log(64)) < 0.3


def test_loss_ignores_minus_100_targets() -> None:
    cfg = _cfg()
    model = build_model(cfg).eval()
    idx = _tokens(cfg)
    targets = idx.clone()
    targets[:, ::2] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep].float(), targets[keep])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_loss_is_computed_in_fp32_under_autocast() -> None:
    cfg = _cfg()
    model = build_model(cfg)
    idx = _tokens(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_gpt_future_tokens_do_not_change_past_logits(attention: str, positions: str) -> None:
    cfg = _cfg(attention=attention, positions=positions)
    model = build_model(cfg).eval()
    idx = _tokens(cfg, batch=2)
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % cfg.vocab_size
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bert_attends_both_ways(attention: str) -> None:
    cfg = _cfg(family="bert", attention=attention)
    model = build_model(cfg).eval()
    idx = _tokens(cfg, batch=2)
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % cfg.vocab_size
    assert not torch.allclose(model(idx)[:, 0], model(changed)[:, 0])


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_sdpa_and_eager_attention_agree(family: str, positions: str) -> None:
    sdpa = build_model(_cfg(family=family, positions=positions, d_head=6)).eval()
    eager = build_model(_cfg(family=family, positions=positions, d_head=6, attention="eager"))
    eager.load_state_dict(sdpa.state_dict())
    eager.eval()
    idx = _tokens(sdpa.cfg)
    assert torch.allclose(sdpa(idx), eager(idx), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt", "bert"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_keeps_loss_and_grads(family: str, dropout: float) -> None:
    cfg = _cfg(family=family, dropout=dropout, n_layer=3)
    model = build_model(cfg).train()
    assert model.activation_checkpointing is False
    idx = _tokens(cfg)
    results = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        _, loss = model(idx, idx)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    assert abs(l0.item() - l1.item()) <= 1e-6
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_checkpointing_is_skipped_in_eval_and_no_grad() -> None:
    cfg = _cfg()
    model = build_model(cfg)
    model.activation_checkpointing = True
    idx = _tokens(cfg)
    model.eval()
    with torch.no_grad():
        assert model(idx).shape == (3, cfg.seq_len, cfg.vocab_size)


def test_generate_appends_tokens_and_crops_context() -> None:
    cfg = _cfg(seq_len=8)
    model = build_model(cfg).eval()
    torch.manual_seed(0)
    start = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(start, max_new_tokens=12, temperature=0.8, top_k=5)
    assert out.shape == (2, 15)
    assert torch.equal(out[:, :3], start)
    assert int(out.min()) >= 0 and int(out.max()) < cfg.vocab_size


def test_generate_top_k_one_is_greedy() -> None:
    cfg = _cfg()
    model = build_model(cfg).eval()
    start = torch.tensor([[1, 2, 3]])
    out = model.generate(start, max_new_tokens=1, top_k=1)
    assert out[0, -1].item() == model(start)[0, -1].argmax().item()


def test_tied_embeddings_share_one_tensor() -> None:
    tied, untied = build_model(_cfg()), build_model(_cfg(tie_embeddings=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    assert n_params(untied) - n_params(tied) == 37 * 16


def test_residual_projections_get_depth_scaled_init() -> None:
    cfg = _cfg(n_layer=8, d_model=128, n_head=4, init_std=0.02)
    model = build_model(cfg)
    c_fc = model.blocks[0].mlp.c_fc.weight.std().item()
    c_proj = model.blocks[0].mlp.c_proj.weight.std().item()
    attn_proj = model.blocks[0].attn.c_proj.weight.std().item()
    assert abs(c_fc - 0.02) < 0.002
    assert abs(c_proj - 0.02 / math.sqrt(16)) < 0.001
    assert abs(attn_proj - 0.02 / math.sqrt(16)) < 0.001


def test_norms_follow_the_config() -> None:
    ln = build_model(_cfg(bias=False)).blocks[0].ln_1
    assert isinstance(ln, torch.nn.LayerNorm) and ln.bias is None
    rms = build_model(_cfg(norm="rmsnorm")).blocks[0].ln_1
    assert isinstance(rms, torch.nn.RMSNorm)
    assert [n for n, _ in rms.named_parameters()] == ["weight"]


def test_t5_builds_an_encoder_decoder() -> None:
    model = build_model(ModelConfig(family="t5", positions="relative"))
    assert {"shared.weight", "encoder.final_layer_norm.weight"} <= {
        n for n, _ in model.named_parameters()}


def test_rope_needs_even_head_dim() -> None:
    with pytest.raises(UserError, match="model.d_head"):
        build_model(_cfg(positions="rope", d_head=5))


def test_sequence_longer_than_seq_len_is_rejected() -> None:
    cfg = _cfg(seq_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        build_model(cfg)(torch.zeros(1, 9, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# mlm_mask


def test_mlm_mask_selects_rate_and_splits_80_10_10() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 100, (64, 512), generator=g)
    inputs, targets = mlm_mask(tokens, 0.15, mask_id=100, vocab_size=100, generator=g)
    selected = targets != -100
    assert abs(selected.float().mean().item() - 0.15) < 0.01
    assert torch.equal(targets[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])
    sel_in = inputs[selected]
    masked = (sel_in == 100).float().mean().item()
    kept = (sel_in == tokens[selected]).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    # kept: the 10% left alone plus random replacements that drew the same token (~0.1%)
    assert abs(kept - 0.1) < 0.02
    assert abs(1 - masked - kept - 0.1) < 0.02
    assert int(inputs.max()) <= 100 and int(inputs.min()) >= 0


def test_mlm_mask_selects_at_least_one_position() -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 10, (1, 4), generator=g)
    for _ in range(20):
        _, targets = mlm_mask(tokens, 0.001, mask_id=10, vocab_size=10, generator=g)
        assert (targets != -100).sum() >= 1


def test_mlm_mask_is_deterministic_with_a_generator() -> None:
    tokens = torch.randint(0, 50, (4, 32))
    a = mlm_mask(tokens, 0.15, 50, 50, torch.Generator().manual_seed(7))
    b = mlm_mask(tokens, 0.15, 50, 50, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(tokens, a[0])


def test_mlm_mask_trains_a_bert_step() -> None:
    cfg = _cfg(family="bert", vocab_size=40)
    model = build_model(cfg)
    tokens = torch.randint(0, 39, (4, cfg.seq_len))
    inputs, targets = mlm_mask(tokens, cfg.mask_rate, 39, 39, None)
    _, loss = model(inputs, targets)
    loss.backward()
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# grouped-query attention, qk-norm, sliding window, mixture of experts


def _llama(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                   n_head=4, d_model=32, tie_embeddings=False)
    base.update(kw)
    return _cfg(**base)


def test_gqa_shrinks_the_kv_projection_and_qk_norm_adds_two_vectors() -> None:
    model = build_model(_llama(n_kv_head=1, d_head=6, qk_norm=True))
    attn = model.blocks[0].attn
    assert attn.c_attn.weight.shape == ((4 + 2 * 1) * 6, 32)
    assert attn.c_proj.weight.shape == (32, 4 * 6)
    names = [n for n, _ in model.blocks[0].named_parameters()]
    assert names[:4] == ["ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight",
                         "attn.q_norm.weight"]
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (6,)


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k() -> None:
    # eps ~0: RMSNorm(7x) = RMSNorm(x) up to rounding (at eps 1e-5 the small init's q and k
    # mean squares, ~1e-4, are not far enough above eps for the weights of every seed)
    torch.manual_seed(0)
    cfg = _llama(n_kv_head=2, qk_norm=True, n_layer=1, norm_eps=1e-12)
    model = build_model(cfg).eval()
    idx = _tokens(cfg)
    before = model(idx)
    with torch.no_grad():
        model.blocks[0].attn.c_attn.weight[: 4 * 8 + 2 * 8] *= 7.0  # q and k rows, not v
    assert torch.allclose(model(idx), before, atol=1e-4)
    plain = build_model(_llama(n_kv_head=2, n_layer=1)).eval()
    before = plain(idx)
    with torch.no_grad():
        plain.blocks[0].attn.c_attn.weight[: 4 * 8 + 2 * 8] *= 7.0
    assert not torch.allclose(plain(idx), before, atol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sliding_window_sees_exactly_window_tokens_back(attention: str) -> None:
    cfg = _llama(n_layer=1, sliding_window=4, attention=attention, n_kv_head=2)
    model = build_model(cfg).eval()
    idx = _tokens(cfg, batch=2)
    changed = idx.clone()
    changed[:, 3] = (changed[:, 3] + 1) % cfg.vocab_size
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)  # before: causal
    for t in range(3, 7):  # positions 3..6 see token 3
        assert not torch.allclose(a[:, t], b[:, t], atol=1e-6)
    assert torch.allclose(a[:, 7:], b[:, 7:], atol=1e-6)  # 7 and later: out of the window


def test_sliding_window_sdpa_equals_eager_and_long_window_is_causal() -> None:
    sdpa = build_model(_llama(sliding_window=5, n_kv_head=2)).eval()
    eager = build_model(_llama(sliding_window=5, n_kv_head=2, attention="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    idx = _tokens(sdpa.cfg)
    assert torch.allclose(sdpa(idx), eager(idx), atol=1e-5)
    full = build_model(_llama(n_kv_head=2)).eval()
    full.load_state_dict(sdpa.state_dict())
    wide = build_model(_llama(n_kv_head=2, sliding_window=12)).eval()
    wide.load_state_dict(sdpa.state_dict())
    assert torch.equal(full(idx), wide(idx))
    assert not torch.allclose(full(idx), sdpa(idx), atol=1e-4)


def _moe_cfg(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(n_expert=4, n_expert_active=2, n_shared_expert=1,
                                   d_expert=16, n_layer=2, n_dense_layer=1, n_kv_head=2)
    base.update(kw)
    return _llama(**base)


@pytest.mark.parametrize("k,shared,mlp", [(1, 0, "swiglu"), (2, 1, "swiglu"), (3, 2, "gelu")])
def test_moe_equals_a_token_by_token_reference(k: int, shared: int, mlp: str) -> None:
    cfg = _moe_cfg(n_expert_active=k, n_shared_expert=shared, mlp=mlp)
    moe = build_model(cfg).blocks[1].mlp
    x = torch.randn(3, 5, cfg.d_model)
    y, aux, counts = moe(x)
    flat = x.view(-1, cfg.d_model)
    ref = torch.zeros_like(flat)
    seen = torch.zeros(cfg.n_expert, dtype=torch.long)
    for n, tok in enumerate(flat):
        probs = F.softmax(moe.router(tok), dim=-1)
        top = probs.topk(k)
        w = top.values / top.values.sum()
        for weight, e in zip(w, top.indices, strict=True):
            ref[n] += weight * moe.experts[int(e)](tok)
            seen[int(e)] += 1
        for s in moe.shared:
            ref[n] += s(tok)
    assert torch.allclose(y.view(-1, cfg.d_model), ref, atol=1e-5)
    assert torch.equal(counts, seen) and int(counts.sum()) == 15 * k
    p = F.softmax(moe.router(flat), dim=-1).mean(0).detach()
    expected = cfg.n_expert * float((seen / (15 * k) * p).sum())
    assert aux.detach().item() == pytest.approx(expected, rel=1e-5)


def test_moe_aux_loss_is_one_when_balanced_and_enters_only_the_training_loss() -> None:
    from budgetlm.model.mlp import balance_loss

    probs = torch.full((8, 4), 0.25)
    experts = torch.tensor([[0, 1], [2, 3]] * 4)
    assert balance_loss(probs, experts, torch.bincount(experts.view(-1))).item() == 1.0
    cfg = _moe_cfg(router_aux_coef=0.5)
    model = build_model(cfg)
    idx = _tokens(cfg)
    model.train()
    _, train_loss = model(idx, idx)
    aux = model.aux_loss
    assert aux is not None and aux.item() >= 1.0 - 1e-6  # n_expert · Σ f·P >= 1 (Cauchy-Schwarz)
    model.eval()
    logits, eval_loss = model(idx, idx)
    plain = F.cross_entropy(logits.view(-1, cfg.vocab_size), idx.view(-1))
    assert eval_loss.item() == pytest.approx(plain.item(), rel=1e-6)
    assert train_loss.item() == pytest.approx(eval_loss.item() + 0.5 * aux.item(), rel=1e-5)


def test_first_blocks_stay_dense_and_expert_load_counts_training_tokens() -> None:
    cfg = _moe_cfg(n_layer=3, n_dense_layer=2)
    model = build_model(cfg)
    assert [hasattr(b.mlp, "router") for b in model.blocks] == [False, False, True]
    idx = _tokens(cfg)
    model.train()
    model(idx, idx)
    model(idx, idx)
    model.eval()
    model(idx)
    load = model.take_expert_load()
    assert len(load) == 1 and sum(load[0]) == 2 * idx.numel() * cfg.n_expert_active
    assert model.take_expert_load() == []


def test_qkv_bias_puts_biases_on_q_k_v_only() -> None:
    """Qwen2's layout: q, k and v projections biased, the output projection and MLP not."""
    from budgetlm.estimate import count_params

    m = ModelConfig(n_head=4, d_model=64, n_kv_head=2, bias=False, qkv_bias=True,
                    positions="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False)
    net = build_model(m)
    biased = sorted(n for n, _ in net.named_parameters() if n.endswith(".bias"))
    assert biased == [f"blocks.{i}.attn.c_attn.bias" for i in range(m.n_layer)]
    assert sum(p.numel() for p in net.parameters()) == count_params(m).total

"""budgetlm.estimate for grouped-query attention and mixture-of-experts models: parameters
against Hugging Face models built on the meta device and against budgetlm's own model, FLOPs
against FlopCounterMode with a fixed router, memory with every expert resident."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from budgetlm import estimate as est
from budgetlm.config import ModelConfig, RunConfig
from budgetlm.errors import UserError

LLAMA = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False,
         "tie_embeddings": False}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hf_params(config: Any) -> int:
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Published shapes against transformers


def _llama3_8b() -> tuple[Any, ModelConfig]:
    t = pytest.importorskip("transformers")
    hf = t.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       tie_word_embeddings=False)
    ours = ModelConfig(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=14336,
                       vocab_size=128256, seq_len=8192, rope_theta=500000.0, **LLAMA)
    return hf, ours


def _mistral_7b() -> tuple[Any, ModelConfig]:
    t = pytest.importorskip("transformers")
    hf = t.MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         sliding_window=4096, tie_word_embeddings=False)
    ours = ModelConfig(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=14336,
                       vocab_size=32000, seq_len=8192, sliding_window=4096, **LLAMA)
    return hf, ours


def _mixtral_8x7b() -> tuple[Any, ModelConfig]:
    t = pytest.importorskip("transformers")
    hf = t.MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False)
    ours = ModelConfig(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=14336,
                       vocab_size=32000, seq_len=4096, n_expert=8, n_expert_active=2, **LLAMA)
    return hf, ours


def _qwen3_30b_a3b() -> tuple[Any, ModelConfig]:
    t = pytest.importorskip("transformers")
    hf = t.Qwen3MoeConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                          moe_intermediate_size=768, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1,
                          mlp_only_layers=[], tie_word_embeddings=False)
    ours = ModelConfig(n_layer=48, d_model=2048, n_head=32, n_kv_head=4, d_head=128, d_ff=6144,
                       vocab_size=151936, seq_len=4096, qk_norm=True, n_expert=128,
                       n_expert_active=8, d_expert=768, **LLAMA)
    return hf, ours


def _qwen3_1_7b() -> tuple[Any, ModelConfig]:
    t = pytest.importorskip("transformers")
    hf = t.Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, tie_word_embeddings=True)
    ours = ModelConfig(n_layer=28, d_model=2048, n_head=16, n_kv_head=8, d_head=128, d_ff=6144,
                       vocab_size=151936, seq_len=4096, qk_norm=True,
                       **{**LLAMA, "tie_embeddings": True})
    return hf, ours


@pytest.mark.parametrize(
    ("shape", "published"),
    [(_llama3_8b, 8_030_261_248), (_mistral_7b, 7_241_732_096),
     (_mixtral_8x7b, 46_702_792_704), (_qwen3_30b_a3b, None), (_qwen3_1_7b, None)],
    ids=["llama3-8b", "mistral-7b", "mixtral-8x7b", "qwen3-30b-a3b", "qwen3-1.7b"],
)
def test_params_equal_transformers_models(shape: Any, published: int | None) -> None:
    hf, ours = shape()
    counted = _hf_params(hf)
    if published is not None:
        assert counted == published
    assert est.count_params(ours).total == counted


def test_qwen2_5_7b_hf_count_and_its_qkv_only_bias() -> None:
    t = pytest.importorskip("transformers")
    hf = t.Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       tie_word_embeddings=False)
    assert _hf_params(hf) == 7_615_616_512
    without = ModelConfig(n_layer=28, d_model=3584, n_head=28, n_kv_head=4, d_ff=18944,
                          vocab_size=152064, seq_len=4096, **LLAMA)
    # q, k and v carry biases (Qwen2's attention_bias), nothing else does
    qkv_biases = 28 * (3584 + 2 * 4 * 128)
    assert est.count_params(without).total == 7_615_616_512 - qkv_biases


@pytest.mark.skipif("qkv_bias" not in ModelConfig.model_fields,
                    reason="ModelConfig has no qkv_bias field (q/k/v-only biases of Qwen2)")
def test_qwen2_5_7b_params_are_exact() -> None:
    m = ModelConfig(n_layer=28, d_model=3584, n_head=28, n_kv_head=4, d_ff=18944,
                    vocab_size=152064, seq_len=4096, qkv_bias=True, **LLAMA)
    assert est.count_params(m).total == 7_615_616_512


def test_mixtral_active_and_per_expert_params() -> None:
    _hf, m = _mixtral_8x7b()
    pc = est.count_params(m)
    per_expert = 3 * 4096 * 14336
    assert pc.per_expert == per_expert
    assert pc.active == pc.total - 32 * 6 * per_expert == 12_879_925_248
    assert pc.active_matmul == pc.matmul - 32 * 6 * per_expert
    d = est.estimate(RunConfig(model=m)).to_dict()
    assert d["params_active"] == pc.active and d["params_per_expert"] == per_expert
    dense = est.count_params(m.model_copy(update={"n_expert": 0}))
    assert dense.per_expert == 0 and dense.active == dense.total


# ---------------------------------------------------------------------------------------------
# Random shapes against budgetlm's own model


def random_gqa(rng: random.Random) -> ModelConfig:
    n_head = rng.choice([2, 4, 6, 8])
    kv = rng.choice([d for d in range(1, n_head + 1) if n_head % d == 0])
    positions = rng.choice(["learned", "rope"])
    return ModelConfig(
        n_layer=rng.randint(1, 3), n_head=n_head, n_kv_head=rng.choice([kv, kv, None]),
        d_model=rng.choice([16, 24, 32, 48]), d_head=rng.choice([4, 8]),
        d_ff=rng.choice([None, 20, 40, 64]), vocab_size=rng.randint(11, 97),
        seq_len=rng.choice([4, 8, 16]), positions=positions,
        norm=rng.choice(["layernorm", "rmsnorm"]), mlp=rng.choice(["gelu", "relu", "swiglu"]),
        bias=rng.random() < 0.5, tie_embeddings=rng.random() < 0.5,
        qk_norm=rng.random() < 0.5, attention=rng.choice(["sdpa", "eager"]),
        sliding_window=rng.choice([None, None, 2, 5]),
    )


def random_moe(rng: random.Random) -> ModelConfig:
    base = random_gqa(rng)
    n_expert = rng.randint(2, 8)
    return base.model_copy(update={
        "n_expert": n_expert, "n_expert_active": rng.randint(1, min(n_expert, 3)),
        "n_shared_expert": rng.choice([0, 0, 1, 2]), "d_expert": rng.choice([None, 8, 12, 24]),
        "n_dense_layer": rng.randint(0, base.n_layer),
    })


def random_shapes(kind: str, n: int = 24, seed: int = 0) -> list[ModelConfig]:
    rng = random.Random(f"{kind}-{seed}")
    make = random_gqa if kind == "gqa" else random_moe
    return [ModelConfig.model_validate(make(rng).model_dump()) for _ in range(n)]


def _build(m: ModelConfig) -> nn.Module:
    from budgetlm.model import build_model

    return build_model(m)


@pytest.mark.parametrize("kind", ["gqa", "moe"])
def test_random_shapes_params_equal_the_built_model(kind: str) -> None:
    for m in random_shapes(kind):
        model = _build(m)
        built = sum(p.numel() for p in model.parameters())
        assert {n: tuple(p.shape) for n, p in model.named_parameters()} == est.param_shapes(m)
        pc = est.count_params(m)
        assert pc.total == built, m
        assert sum(k * s.numel for s, k in est.param_spec_counts(m)) == built
        assert sum(s.numel for s in est.param_specs(m)) == built


@pytest.mark.parametrize("kind", ["gqa", "moe"])
def test_spec_counts_list_every_tensor_in_constant_time(kind: str) -> None:
    for m in random_shapes(kind, n=8, seed=1):
        listed = est.param_specs(m)
        counted = est.param_spec_counts(m)
        assert sum(k * s.numel for s, k in counted) == sum(s.numel for s in listed)
        assert len({s.name for s in listed}) == len(listed)
        experts = sum(s.numel for s in listed if s.expert)
        assert experts == m.moe_layers * m.n_expert * est.expert_params(m)
    big = random_shapes("moe", n=1, seed=2)[0].model_copy(
        update={"n_layer": 10**6, "n_expert": 10**4, "n_expert_active": 1})
    assert len(est.param_spec_counts(big)) < 60


# ---------------------------------------------------------------------------------------------
# FLOPs against FlopCounterMode


class FixedRouter:
    """Forward hooks that replace every router's logits by fixed ones (unbalanced, seeded per
    layer; gradients still flow to the router) and record the tokens each expert receives."""

    def __init__(self, model: nn.Module, m: ModelConfig):
        self.m = m
        self.routed = 0
        self.per_expert: list[list[int]] = []
        self.handles = []
        for name, module in model.named_modules():
            if name.split(".")[-1] == "router" and isinstance(module, nn.Linear):
                layer = len(self.handles)
                self.handles.append(module.register_forward_hook(self._hook(layer)))

    def _hook(self, layer: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
            g = torch.Generator().manual_seed(layer)
            fixed = 3 * torch.randn(out.shape, generator=g)
            fixed[..., 0] += 2.0  # expert 0 popular, some others idle
            top = fixed.reshape(-1, self.m.n_expert).topk(self.m.n_expert_active, dim=-1)
            counts = torch.bincount(top.indices.flatten(), minlength=self.m.n_expert)
            self.per_expert.append(counts.tolist())
            self.routed += int(counts.sum())
            return out + (fixed.to(out.dtype) - out).detach()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _counted(m: ModelConfig, batch: int = 2) -> tuple[float, FixedRouter]:
    torch.manual_seed(0)
    model = _build(m).train()
    router = FixedRouter(model, m)
    assert len(router.handles) == m.moe_layers
    idx = torch.randint(m.vocab_size, (batch, m.seq_len))
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        _, loss = model(idx, idx)
        loss.backward()
    router.remove()
    return counter.get_total_flops() / (batch * m.seq_len), router


def _expert_flops_per_token(m: ModelConfig, routed_tokens: int, tokens: int) -> float:
    """Training FLOPs of the routed experts per token, from the tokens actually routed."""
    return 6.0 * routed_tokens * est.expert_params(m, matmul_only=True) / tokens


@pytest.mark.parametrize("kind", ["gqa", "moe"])
def test_training_flops_match_flop_counter(kind: str) -> None:
    for m in random_shapes(kind, n=20, seed=3):
        fl = est.flops_per_token(m)
        counted, router = _counted(m)
        assert abs(fl.model - counted) / counted < 0.02, (m, fl.model, counted)
        assert est.model_flops_per_token(m) == fl.model
        if m.moe_layers:
            tokens = 2 * m.seq_len
            assert router.routed == m.moe_layers * tokens * m.n_expert_active
            # the estimate is the dense part plus the experts the tokens were routed to
            dense = est.flops_per_token(m.model_copy(update={"n_expert_active": 1}))
            one = _expert_flops_per_token(m, m.moe_layers * tokens, tokens)
            assert fl.model == pytest.approx(
                dense.model - one + _expert_flops_per_token(m, router.routed, tokens))


def test_flops_count_the_router_and_active_experts_only() -> None:
    _hf, m = _mixtral_8x7b()
    fl = est.flops_per_token(m)
    pc = est.count_params(m)
    attention = 32 * 2 * 2 * m.seq_len * 4096
    assert fl.model == 6 * pc.active_matmul + 3 * attention
    router = 32 * 4096 * 8
    dense_mlp = 32 * 3 * 4096 * 14336
    assert pc.active_matmul == (32 * (4096 * 4096 * 2 + 2 * 4096 * 1024) + router
                                + 2 * dense_mlp + 32000 * 4096)
    gqa = est.flops_per_token(m.model_copy(update={"n_expert": 0}))
    mha = est.flops_per_token(m.model_copy(update={"n_expert": 0, "n_kv_head": None}))
    assert mha.model - gqa.model == 6 * 32 * 2 * 4096 * (4096 - 1024)


# ---------------------------------------------------------------------------------------------
# Memory


def test_memory_keeps_every_expert_resident() -> None:
    _hf, m = _mixtral_8x7b()
    cfg = RunConfig(model=m, train={"precision": "bf16", "micro_batch": 1})
    pc = est.count_params(m)
    mem = est.memory_breakdown(cfg, optimizer="adamw")
    assert est.optimizer_state_bytes(m, "adamw") == 8 * pc.total
    assert mem.optimizer == 8 * pc.total
    assert mem.weights >= 4 * pc.total
    # sharded over 4 ranks: 2 of the 8 experts of each block per rank
    sharded = est.memory_breakdown(cfg, optimizer="adamw", expert_shards=4)
    held = pc.total - 32 * 6 * pc.per_expert
    assert sharded.optimizer == 8 * held
    assert est.memory_breakdown(cfg, optimizer="adamw", expert_shards=1) == mem
    counts = est.resident_spec_counts(m, 3)  # ceil(8 / 3) = 3 experts per block
    assert sum(k * s.numel for s, k in counts) == pc.total - 32 * 5 * pc.per_expert


def test_gqa_shrinks_activations_and_moe_adds_routed_ones() -> None:
    base = ModelConfig(n_layer=4, d_model=256, n_head=8, d_ff=512, seq_len=128, vocab_size=64,
                       **LLAMA)
    gqa = base.model_copy(update={"n_kv_head": 2})
    for device in ("cpu", "cuda"):
        mha_b = est.layer_activation_bytes(base, "bf16", device)
        gqa_b = est.layer_activation_bytes(gqa, "bf16", device)
        # k and v: 2 of 8 heads: projection and rotated k shrink by 3/4 of 32 * 2 B per head
        assert mha_b - gqa_b == 2 * (2 * 6 * 32) + 2 * 6 * 32
    moe = gqa.model_copy(update={"n_expert": 8, "n_expert_active": 2})
    top1 = moe.model_copy(update={"n_expert_active": 1})
    a2 = est.activation_bytes(moe, 1, "bf16", False)
    a1 = est.activation_bytes(top1, 1, "bf16", False)
    dense = est.activation_bytes(gqa, 1, "bf16", False)
    assert a2 > a1 > dense * 0.9
    per_expert_token = (a2 - a1) / (4 * 128)
    assert per_expert_token > 4 * 2 * 512  # hidden activations of one SwiGLU expert
    with pytest.raises(UserError, match="expert_shards"):
        est.resident_spec_counts(moe, 0)


def test_estimate_of_a_large_moe_is_constant_time() -> None:
    import time

    _hf, m = _qwen3_30b_a3b()
    cfg = RunConfig(model=m.model_copy(update={"n_layer": 10**6}))
    t0 = time.perf_counter()
    e = est.estimate(cfg)
    assert time.perf_counter() - t0 < 1.0
    assert e.params.active < e.params.total
    assert math.isfinite(e.flops.model)


def _saved_bytes(model: nn.Module, m: ModelConfig, batch: int, precision: str) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    idx = torch.randint(m.vocab_size, (batch, m.seq_len))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(idx, idx)
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["gqa", "moe"])
def test_activations_match_what_autograd_saves_on_cpu(kind: str) -> None:
    """Per sequence, (saved(B=6) - saved(B=2)) / 4: activations plus the fp32 log-probabilities
    (as tests/test_estimate.py does for dense models). MoE routing is the model's own (balance
    does not change the routed-token total)."""
    for i, m in enumerate(random_shapes(kind, n=12, seed=5)):
        m = m.model_copy(update={"dropout": 0.0})
        model = _build(m).train()
        precision = "bf16" if i % 2 else "fp32"
        measured = (_saved_bytes(model, m, 6, precision) - _saved_bytes(model, m, 2, precision)) / 4
        expected = est.activation_bytes(m, 1, precision, False, "cpu")
        expected += m.seq_len * m.vocab_size * 4
        assert abs(measured - expected) / measured < 0.10, (m, precision, measured, expected)

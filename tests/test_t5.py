"""T5 (encoder-decoder, span corruption): names against the estimator, logits against Hugging
Face, span corruption, padding, a short training run, FLOPs and memory against torch's
counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import load_memory_truth

from budgetlm.config import ModelConfig, RunConfig, preset, with_values
from budgetlm.data import span_corrupt, span_lengths, t5_vocabulary
from budgetlm.errors import UserError
from budgetlm.estimate import flops_per_token, memory_breakdown, param_shapes
from budgetlm.model import IGNORE_INDEX, PAD_ID, build_model

SMALL = dict(family="t5", n_layer=2, n_decoder_layer=3, n_head=2, d_model=32, d_head=8, d_ff=48,
             vocab_size=50, seq_len=24, target_len=7, relative_buckets=8, norm_eps=1e-6)


def _t5_tiny(**values: Any) -> RunConfig:
    return with_values(preset("t5-tiny"), {"model.vocab_size": 261, **values})


@pytest.mark.parametrize("kw", [
    dict(positions="relative", norm="rmsnorm", mlp="relu", bias=False),
    dict(positions="learned", norm="layernorm", mlp="swiglu", bias=True, tie_embeddings=False),
])
def test_parameters_match_the_estimator_name_by_name(kw: dict[str, Any]) -> None:
    m = ModelConfig(**{**SMALL, **kw})
    got = [(n, tuple(p.shape)) for n, p in build_model(m).named_parameters()]
    assert got == list(param_shapes(m).items())


def test_rope_is_refused() -> None:
    with pytest.raises(UserError, match="model.positions"):
        build_model(ModelConfig(**{**SMALL, "positions": "rope"}))


@pytest.mark.parametrize(("mlp", "proj"), [("relu", "relu"), ("swiglu", "gated-silu")])
def test_logits_and_loss_match_hugging_face_t5(mlp: str, proj: str) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    m = ModelConfig(**{**SMALL, "positions": "relative", "norm": "rmsnorm", "mlp": mlp,
                       "bias": False})
    ours = build_model(m).eval()
    start = m.vocab_size - 1  # decoder start id (and HF's pad, which replaces -100)
    hf = T5ForConditionalGeneration(T5Config(
        vocab_size=m.vocab_size, d_model=m.d_model, d_kv=m.head_dim, d_ff=m.ff,
        num_layers=m.n_layer, num_decoder_layers=m.decoder_layers, num_heads=m.n_head,
        relative_attention_num_buckets=m.relative_buckets, dropout_rate=0.0,
        layer_norm_epsilon=m.norm_eps, feed_forward_proj=proj, decoder_start_token_id=start,
        pad_token_id=start, eos_token_id=1)).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected
    assert set(missing) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                            "lm_head.weight"}  # tied to `shared` in HF
    idx = torch.randint(0, 48, (3, 20))
    idx[1, 15:] = PAD_ID
    tgt = torch.randint(0, 48, (3, 7))
    tgt[2, 5:] = IGNORE_INDEX
    with torch.no_grad():
        logits, loss = ours(idx, tgt)
        out = hf(input_ids=idx.clamp(min=0), attention_mask=(idx != PAD_ID).long(), labels=tgt)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)


def test_padding_is_not_attended() -> None:
    torch.manual_seed(0)
    for positions in ("relative", "learned"):
        m = ModelConfig(**{**SMALL, "positions": positions})
        model = build_model(m).eval()
        idx = torch.randint(0, 48, (2, 12))
        padded = torch.cat([idx, torch.full((2, 8), PAD_ID)], 1)
        tgt = torch.randint(0, 48, (2, 5))
        with torch.no_grad():
            a, _ = model(idx, tgt)
            b, _ = model(padded, tgt)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_span_corruption_lengths_and_reconstruction() -> None:
    m = _t5_tiny().model
    L = span_lengths(m)
    vocab = t5_vocabulary(256, m)
    assert vocab == (256, L.spans, 256 + L.spans, 257 + L.spans)
    windows = torch.randint(0, 256, (8, L.raw))
    x, y = span_corrupt(windows, m, vocab.first_sentinel, PAD_ID, IGNORE_INDEX,
                        torch.Generator().manual_seed(1))
    assert x.shape == (8, m.seq_len) and y.shape == (8, m.decoder_seq_len)
    for b in range(8):
        xs = [t for t in x[b].tolist() if t != PAD_ID]
        ys = [t for t in y[b].tolist() if t != IGNORE_INDEX]
        assert len(xs) == L.inputs and len(ys) == L.targets
        sentinels = [t for t in xs if t >= 256]
        assert sentinels == list(range(256, 256 + L.spans)) == [t for t in ys if t >= 256]
        out, yi = [], 0
        for t in xs:  # each sentinel in the input -> the tokens after it in the targets
            if t < 256:
                out.append(t)
                continue
            assert ys[yi] == t
            yi += 1
            while yi < len(ys) and ys[yi] < 256:
                out.append(ys[yi])
                yi += 1
        assert out == windows[b].tolist()
    x2, y2 = span_corrupt(windows, m, 256, PAD_ID, IGNORE_INDEX, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded


def test_target_len_too_short_for_span_corruption() -> None:
    m = _t5_tiny(**{"model.target_len": 3}).model
    with pytest.raises(UserError, match="model.target_len"):
        t5_vocabulary(256, m)
    assert t5_vocabulary(256, m, task="classification") == (256, 0, 256, 257)


def test_loss_falls_in_a_short_cpu_run(tmp_path: Path) -> None:
    from budgetlm.train import train

    cfg = with_values(preset("t5-tiny"), {"train.max_steps": 40, "train.eval_interval": 20,
                                          "train.eval_tokens": 4096})
    seen: list[dict[str, Any]] = []
    result = train(cfg, run_dir=tmp_path / "run", on_eval=seen.append)
    assert result.status == "completed" and result.val_bpb is None
    assert seen[0]["val_loss"] < 5.0 < 5.56  # ln(261) at the start
    assert result.val_loss < seen[0]["val_loss"]
    assert result.tokens == 40 * cfg.tokens_per_step


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("over", [{}, {"model.mlp": "swiglu", "model.dropout": 0.1},
                                  {"model.positions": "learned"}])
def test_flops_match_flop_counter(checkpointing: bool, over: dict[str, Any]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    m = _t5_tiny(**over).model
    torch.manual_seed(0)
    model = build_model(m).train()
    model.activation_checkpointing = checkpointing
    windows = torch.randint(0, 256, (4, span_lengths(m).raw))
    x, y = span_corrupt(windows, m, 256, PAD_ID, IGNORE_INDEX, torch.Generator().manual_seed(0))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, y)
        loss.backward()
    est = flops_per_token(m, checkpointing).total * x.numel()
    assert est == counter.get_total_flops()




def _tracked_peak(cfg: RunConfig) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from budgetlm.optim import build_optimizer

    mt, m, t = load_memory_truth(), cfg.model, cfg.train
    with FakeTensorMode():
        torch.manual_seed(0)
        model = build_model(m).train()
        model.activation_checkpointing = t.activation_checkpointing
        opt = build_optimizer(model, cfg.optim)
        assert isinstance(t.micro_batch, int)
        x = torch.randint(m.vocab_size, (t.micro_batch, m.seq_len))
        y = torch.randint(m.vocab_size, (t.micro_batch, m.decoder_seq_len))
        for p in model.parameters():  # one update creates the optimizer state
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model, opt, x, y)
        with tracker:
            mt._step(model, opt, x, y, t.precision, cfg.optim.grad_clip, [], tracker)
        return int(mt._total(tracker.get_tracker_snapshot("peak")))


@pytest.mark.parametrize(("mb", "precision", "checkpointing", "optimizer"), [
    (4, "fp32", False, "adamw"), (8, "fp32", False, "adafactor"), (4, "bf16", False, "lion"),
    (4, "bf16", False, "adamw"),
    # the peak in the encoder's bottom block: the summed (B, H, T, T) gradient of its bias + mask
    (8, "bf16", True, "sgd"), (2, "fp32", True, "muon"), (8, "fp32", True, "adafactor"),
    # the peak in the encoder's top block (fp32) and at the decoder's token lookup, every encoder
    # activation and autocast copy still kept (bf16)
    (1, "fp32", False, "adamw"), (1, "bf16", False, "sgd"),
])
def test_memory_matches_memtracker(mb: int, precision: str, checkpointing: bool,
                                   optimizer: str) -> None:
    pytest.importorskip("torch.distributed._tools.mem_tracker")
    from torch._subclasses.fake_tensor import FakeTensor

    cfg = _t5_tiny(**{"train.micro_batch": mb, "train.precision": precision,
                      "train.activation_checkpointing": checkpointing,
                      "optim.name": optimizer, "train.device": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    item = FakeTensor.__dict__.get("item")
    FakeTensor.item = lambda self: 1.0  # torch's Adafactor reads a norm
    try:
        tracked = _tracked_peak(cfg)
    finally:
        torch.set_num_threads(threads)
        if item is None:
            del FakeTensor.item
        else:
            FakeTensor.item = item
    error = (memory_breakdown(cfg, device="cpu").tensor_peak - tracked) / tracked
    assert -0.01 <= error <= 0.02, f"{error:+.2%}"

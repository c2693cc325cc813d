"""Optimizers, parameter groups, schedules (budgetlm.optim). CPU, a few seconds."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from budgetlm.config import OPTIMIZERS, OptimConfig, ScheduleConfig
from budgetlm.optim import (
    Lamb,
    Lion,
    MuonWithAdamW,
    build_optimizer,
    clip_grad_norm,
    lr_factor,
    param_groups,
    set_lr,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscription stalls on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Tiny models


class TinyLM(nn.Module):
    """Embedding, norm, two hidden matrices, head (tied or untied): a GPT in miniature."""

    def __init__(self, vocab: int = 16, d: int = 8, tie: bool = True) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.proj = nn.Linear(4 * d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        x = x + self.proj(torch.relu(self.fc(self.ln(x))))
        return self.lm_head(x)


def lm_batch(seed: int = 0, vocab: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (32,), generator=g)
    return x, (x * 3 + 1) % vocab  # a learnable token map


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> list[float]:
    x, y = lm_batch(seed)
    losses = []
    for _ in range(steps):
        loss = lm_loss(model, x, y)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return losses


def ids(params: list[torch.Tensor]) -> set[int]:
    return {id(p) for p in params}


def roundtrip(sd: dict) -> dict:
    """Save and load a state dict through bytes, as a checkpoint does."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------------------------------------
# Every optimizer trains


# lrs that suit a 50-step toy problem (Muon's hidden lr is its own 0.02 default)
TOY_LR = {"sgd": 0.1, "adam": 1e-2, "adamw": 1e-2, "rmsprop": 1e-3, "adafactor": 1e-1,
          "lion": 3e-3, "lamb": 1e-2, "muon": 1e-2}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_loss(name: str) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name=name, lr=TOY_LR[name]))
    assert all("base_lr" in g for g in opt.param_groups)
    losses = train(model, opt, 50)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


def test_adam_and_rmsprop_take_no_weight_decay() -> None:
    for name in ("adam", "rmsprop"):
        opt = build_optimizer(TinyLM(), OptimConfig(name=name, weight_decay=0.1))
        assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)
    opt = build_optimizer(TinyLM(), OptimConfig(name="adamw", weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_fused_flag_reaches_adamw() -> None:
    model = TinyLM()
    assert build_optimizer(model, OptimConfig(name="adamw"), fused=True).param_groups[0]["fused"]
    assert not build_optimizer(model, OptimConfig(name="adamw")).param_groups[0]["fused"]  # CPU
    muon = build_optimizer(model, OptimConfig(name="muon"), fused=True)
    assert muon.adamw.param_groups[0]["fused"]


# ---------------------------------------------------------------------------------------------
# Lion and LAMB against the papers' formulas


def test_lion_matches_paper_update_two_steps() -> None:
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    p0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    g1 = torch.tensor([[0.3, -0.1], [0.0, 2.0]])
    g2 = torch.tensor([[-1.0, 0.2], [0.4, -0.3]])
    p = nn.Parameter(p0.clone())
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)

    want, m = p0.clone(), torch.zeros_like(p0)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        c = b1 * m + (1 - b1) * g
        want = want - lr * (torch.sign(c) + wd * want)
        m = b2 * m + (1 - b2) * g
        torch.testing.assert_close(p.data, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, atol=1e-6, rtol=0)
    # first step by hand: c = 0.1*g1, sign(0) = 0 leaves the zero-grad entry to decay only
    step1 = p0 - lr * (torch.sign(0.1 * g1) + wd * p0)
    assert step1[1, 0].item() == pytest.approx(0.5 * (1 - lr * wd))


def _lamb_reference(p, grads, lr, b1, b2, eps, wd):
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * p
        wn, rn = p.norm().item(), r.norm().item()
        ratio = wn / rn if wn > 0 and rn > 0 else 1.0
        p = p - lr * ratio * r
    return p


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_lamb_matches_paper_update_two_steps(wd: float) -> None:
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-6
    p0 = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
    grads = [torch.tensor([[0.3, -0.1, 0.0], [1.0, 2.0, -0.5]]),
             torch.tensor([[-1.0, 0.2, 0.4], [0.0, -0.3, 0.7]])]
    p = nn.Parameter(p0.clone())
    opt = Lamb([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for k, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        want = _lamb_reference(p0.clone(), grads[:k], lr, b1, b2, eps, wd)
        torch.testing.assert_close(p.data, want, atol=1e-6, rtol=0)
    # step 1 closed form (no decay): m̂ = g, v̂ = g², r ≈ sign(g); p moves by lr·‖p‖/‖r‖·r
    if wd == 0.0:
        g = grads[0]
        r = g / (g.abs() + eps)
        one = p0 - lr * (p0.norm() / r.norm()) * r
        torch.testing.assert_close(
            _lamb_reference(p0.clone(), grads[:1], lr, b1, b2, eps, 0.0), one, atol=1e-6, rtol=0
        )


def test_lamb_zero_grad_and_zero_norm_cases() -> None:
    lr = 0.1
    # zero gradient, no decay: r = 0 -> ratio 1, nothing moves
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = Lamb([p], lr=lr, weight_decay=0.0)
    p.grad = torch.zeros(2)
    opt.step()
    assert torch.equal(p.data, torch.tensor([1.0, 2.0]))
    # zero gradient with decay: r = wd·p, ratio ‖p‖/‖wd·p‖ = 1/wd -> p -= lr·p
    p = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = Lamb([p], lr=lr, weight_decay=0.5)
    p.grad = torch.zeros(2)
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([1.0, 2.0]) * (1 - lr), atol=1e-6, rtol=0)
    # zero parameter: ratio 1, plain Adam-like step r = g/(|g|+eps)
    p = nn.Parameter(torch.zeros(3))
    opt = Lamb([p], lr=lr, eps=1e-6, weight_decay=0.01)
    g = torch.tensor([0.5, -2.0, 0.0])
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.data, -lr * g / (g.abs() + 1e-6), atol=1e-6, rtol=0)
    assert torch.isfinite(p.data).all()


# ---------------------------------------------------------------------------------------------
# Parameter groups


def test_param_groups_split_and_dedupe_tied_embedding() -> None:
    model = TinyLM(tie=True)
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(weight_decay=0.1))}
    decay, no_decay = ids(groups["decay"]["params"]), ids(groups["no_decay"]["params"])
    assert decay == ids([model.fc.weight, model.proj.weight])
    assert no_decay == ids([model.wte.weight, model.ln.weight, model.ln.bias,
                            model.fc.bias, model.proj.bias])
    n_all = sum(len(g["params"]) for g in groups.values())
    assert n_all == len(list(model.parameters())) == 7  # tied head counted once
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["base_lr"] == groups["decay"]["lr"] == 1e-3


def test_param_groups_untied_head_is_decayed() -> None:
    model = TinyLM(tie=False)
    groups = {g["name"]: g for g in param_groups(model, OptimConfig())}
    assert id(model.lm_head.weight) in ids(groups["decay"]["params"])
    assert id(model.wte.weight) in ids(groups["no_decay"]["params"])


def test_param_groups_decay_all() -> None:
    model = TinyLM()
    groups = param_groups(model, OptimConfig(decay_all=True, weight_decay=0.2))
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.2
    assert ids(groups[0]["params"]) == ids(list(model.parameters()))


def test_param_groups_skip_frozen() -> None:
    model = TinyLM()
    model.ln.requires_grad_(False)
    groups = param_groups(model, OptimConfig())
    assert not ids([model.ln.weight, model.ln.bias]) & ids([p for g in groups for p in g["params"]])


# ---------------------------------------------------------------------------------------------
# Muon + AdamW


@pytest.mark.parametrize("tie", [True, False])
def test_muon_routes_hidden_matrices_only(tie: bool) -> None:
    model = TinyLM(tie=tie)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=3e-3, muon_lr=0.05, momentum=0.95))
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt, torch.optim.Optimizer)
    muon = [p for g in opt.param_groups if g["use_muon"] for p in g["params"]]
    adamw = [p for g in opt.param_groups if not g["use_muon"] for p in g["params"]]
    assert ids(muon) == ids([model.fc.weight, model.proj.weight])
    assert id(model.wte.weight) in ids(adamw) and id(model.lm_head.weight) in ids(adamw)
    assert ids(muon) | ids(adamw) == ids(list(model.parameters()))
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    assert opt.muon.param_groups[0]["momentum"] == 0.95
    assert {g["base_lr"] for g in opt.param_groups if g["use_muon"]} == {0.05}
    assert {g["base_lr"] for g in opt.param_groups if not g["use_muon"]} == {3e-3}
    # one factor scales both; the returned lr is AdamW's
    assert set_lr(opt, 0.5) == pytest.approx(1.5e-3)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(1.5e-3)


def test_muon_default_lr_and_zero_grad() -> None:
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon"))
    assert opt.muon.param_groups[0]["lr"] == 0.02
    train(model, opt, 1)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["muon", "lion", "lamb", "adamw", "adafactor"])
def test_state_dict_roundtrip_is_bit_exact(name: str) -> None:
    cfg = OptimConfig(name=name, lr=TOY_LR[name])
    torch.manual_seed(0)
    a = TinyLM()
    opt_a = build_optimizer(a, cfg)
    train(a, opt_a, 3, seed=1)
    set_lr(opt_a, 0.7)

    b = copy.deepcopy(a)
    opt_b = build_optimizer(b, cfg)
    opt_b.load_state_dict(roundtrip(opt_a.state_dict()))
    assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]

    train(a, opt_a, 4, seed=2)
    train(b, opt_b, 4, seed=2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    if name == "muon":  # the inner optimizers were relinked to the loaded groups and state
        assert opt_b.muon.state is opt_b.state and opt_b.adamw.state is opt_b.state
        assert all(any(g is h for h in opt_b.param_groups) for g in opt_b.muon.param_groups)


def test_muon_deepcopy_keeps_inner_optimizers() -> None:
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon"))
    train(model, opt, 2)
    dup = copy.deepcopy(opt)
    assert dup.muon is not opt.muon and dup.muon.state is dup.state
    assert all(any(g is h for h in dup.param_groups) for g in dup.adamw.param_groups)


def test_muon_add_param_group_routes_by_flag() -> None:
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name="muon"))
    extra_m, extra_v = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(4))
    opt.add_param_group({"params": [extra_m], "use_muon": True, "lr": 0.01})
    opt.add_param_group({"params": [extra_v], "lr": 1e-3})
    assert opt.muon.param_groups[-1]["params"] == [extra_m]
    assert "nesterov" in opt.muon.param_groups[-1]  # Muon's defaults filled in
    assert opt.adamw.param_groups[-1]["params"] == [extra_v]
    assert opt.param_groups[-1]["base_lr"] == 1e-3 and len(opt.param_groups) == 4
    (extra_m.sum() + extra_v.sum()).backward()
    opt.step()


def test_muon_state_dict_rejects_other_split() -> None:
    opt = build_optimizer(TinyLM(), OptimConfig(name="muon"))
    other = build_optimizer(TinyLM(), OptimConfig(name="adamw"))
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize("name", ["muon", "adamw", "lion", "lamb"])
def test_grad_scaler_steps_and_skips_on_inf(name: str) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, OptimConfig(name=name, lr=TOY_LR[name]))
    ref = copy.deepcopy(model)
    ref_opt = build_optimizer(ref, OptimConfig(name=name, lr=TOY_LR[name]))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert scaler.is_enabled()
    x, y = lm_batch()

    # a scaled step with unscale + clip equals an unscaled step with the same clip
    scaler.scale(lm_loss(model, x, y)).backward()
    scaler.unscale_(opt)
    n1 = clip_grad_norm(model, 1.0)
    scaler.step(opt)
    scaler.update()
    lm_loss(ref, x, y).backward()
    n2 = clip_grad_norm(ref, 1.0)
    ref_opt.step()
    assert n1 == pytest.approx(n2, rel=1e-5)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)

    # an inf gradient: the step is skipped and the scale backs off
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.scale(lm_loss(model, x, y)).backward()
    model.fc.weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 1024.0
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_clip_grad_norm() -> None:
    model = TinyLM()
    assert clip_grad_norm(model, 1.0) == 0.0  # no grads yet
    lm_loss(model, *lm_batch()).backward()
    want = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert clip_grad_norm(model.parameters(), None) == pytest.approx(want, rel=1e-5)
    assert clip_grad_norm(model, want / 2) == pytest.approx(want, rel=1e-5)
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert after == pytest.approx(want / 2, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Schedules


def sched(**kw) -> ScheduleConfig:
    kw.setdefault("min_lr_ratio", 0.1)
    return ScheduleConfig(**kw)


BIG_STEP = 10**9  # past any warmup


@pytest.mark.parametrize(
    "name, want",
    [
        ("constant", [1.0, 1.0, 1.0, 1.0]),
        ("linear", [1.0, 0.55, 0.28, 0.1]),
        ("cosine", [1.0, 0.55, 0.1 + 0.9 * 0.5 * (1 + math.cos(0.8 * math.pi)), 0.1]),
        ("wsd", [1.0, 1.0, 1.0, 0.1]),
    ],
)
def test_schedule_known_points(name: str, want: list[float]) -> None:
    cfg = sched(name=name, warmup_steps=0)
    got = [lr_factor(cfg, p, BIG_STEP) for p in (0.0, 0.5, 0.8, 1.0)]
    assert got == pytest.approx(want, abs=1e-12)
    if name != "constant":
        assert lr_factor(cfg, 1.0, BIG_STEP) == 0.1  # exactly min_lr_ratio


def test_wsd_one_minus_sqrt_cooldown() -> None:
    cfg = sched(name="wsd", decay_fraction=0.2)
    # 1 - sqrt cooldown over the last 20%: at 0.85 a quarter of the way through
    assert lr_factor(cfg, 0.85, BIG_STEP) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.25)))
    assert lr_factor(cfg, 0.9, BIG_STEP) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))
    assert lr_factor(sched(name="wsd", decay_fraction=1.0), 0.25, BIG_STEP) == pytest.approx(0.55)


def test_warmup_steps_and_fraction() -> None:
    cfg = sched(name="constant", warmup_steps=10)
    assert [lr_factor(cfg, 0.0, s) for s in (0, 4, 9, 10, 50)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0]
    )
    cos = sched(name="cosine", warmup_steps=10)
    assert lr_factor(cos, 0.5, 4) == pytest.approx(0.5 * 0.55)  # warmup multiplies the decay
    frac = sched(name="constant", warmup_fraction=0.1)
    assert [lr_factor(frac, p, 0) for p in (0.0, 0.05, 0.1, 0.5)] == pytest.approx(
        [0.0, 0.5, 1.0, 1.0]
    )
    both = sched(name="constant", warmup_steps=10, warmup_fraction=0.1)
    assert lr_factor(both, 0.05, 4) == pytest.approx(0.25)


def test_nanogpt_get_lr_reproduced() -> None:
    # nanoGPT train.py get_lr (karpathy/nanoGPT master)
    learning_rate, min_lr, warmup_iters, lr_decay_iters = 1e-3, 1e-4, 100, 2000

    def get_lr(it: int) -> float:
        if it < warmup_iters:
            return learning_rate * (it + 1) / (warmup_iters + 1)
        if it > lr_decay_iters:
            return min_lr
        decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
        coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
        return min_lr + coeff * (learning_rate - min_lr)

    cfg = sched(name="cosine", warmup_steps=warmup_iters, min_lr_ratio=0.1)
    for it in (0, 50, 99, 100, 1050, 1999, 2000, 2500):
        got = learning_rate * lr_factor(cfg, it / lr_decay_iters, it, total_steps=lr_decay_iters)
        assert got == pytest.approx(get_lr(it), rel=1e-12, abs=1e-15), it
    assert learning_rate * lr_factor(cfg, 0.525, 1050, total_steps=2000) == pytest.approx(5.5e-4)


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "wsd"])
@pytest.mark.parametrize("total", [None, 200])
def test_schedules_bounded_and_monotone_after_warmup(name: str, total: int | None) -> None:
    cfg = sched(name=name, warmup_steps=20, warmup_fraction=0.05, min_lr_ratio=0.05)
    values = [lr_factor(cfg, s / 200, s, total_steps=total) for s in range(0, 201)]
    assert all(0.0 <= v <= 1.0 for v in values)
    after = values[20:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:], strict=False))
    if name != "constant":
        assert values[-1] == pytest.approx(0.05)
    # out-of-range progress is clamped
    assert 0.0 <= lr_factor(cfg, 1.7, 500) <= 1.0 and 0.0 <= lr_factor(cfg, -0.1, 0) <= 1.0


def test_set_lr_scales_every_group_from_base_lr() -> None:
    opt = build_optimizer(TinyLM(), OptimConfig(name="adamw", lr=2e-3))
    assert set_lr(opt, 0.25) == pytest.approx(5e-4)
    assert set_lr(opt, 1.0) == pytest.approx(2e-3)  # from base_lr, not compounding
    assert all(g["lr"] == g["base_lr"] == 2e-3 for g in opt.param_groups)


def test_muon_matches_torch_muon_in_bf16_and_runs_fp32_on_cpu() -> None:
    from budgetlm.optim.muon import Muon

    torch.manual_seed(0)
    w0 = torch.randn(6, 4)
    grads = [torch.randn(6, 4) for _ in range(3)]
    a = torch.nn.Parameter(w0.clone())
    b = torch.nn.Parameter(w0.clone())
    ours = Muon([a], lr=0.02, momentum=0.9, nesterov=True, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon([b], lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.1)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.equal(a.data, b.data)
    # fp32 on CPU: the same update up to bf16 rounding, and orthogonal-ish output
    c = torch.nn.Parameter(w0.clone())
    fp32 = Muon([c], lr=0.02, momentum=0.9, nesterov=True)
    for g in grads:
        c.grad = g.clone()
        fp32.step()
    assert torch.allclose(c.data, b.data, atol=5e-3)
    assert not torch.equal(c.data, b.data)

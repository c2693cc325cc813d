"""Optimizers and learning-rate schedules.

The trainer calls five things: `build_optimizer` (one optimizer object for any `optim.name`),
`lr_factor` (the schedule: a multiplier of the peak lr), `set_lr` (apply it to every group),
`clip_grad_norm`, and, through `build_optimizer`, `param_groups` (decay / no-decay split).

Weight decay by optimizer (`optim.weight_decay`, applied to the decay group only):
- adamw, lion, lamb, muon, adafactor: decoupled decay (Loshchilov & Hutter 2019), p -= lr·wd·p.
- sgd: torch's L2 term (g += wd·p); without momentum this is the same update as decoupled decay.
- adam, rmsprop: none. torch's `weight_decay` for these is a coupled L2 penalty that the adaptive
  denominator rescales, which is not what the config field means; choose `adamw` for Adam with
  decay. (Deciding by "was the field set explicitly" is not used: a resolved config.yaml sets
  every field, so a run and its rerun would differ.)

µP (`build_optimizer(..., width_mult=m)`, m = `ModelConfig.width_mult`): per-group learning
rates by which dimensions of each parameter grow with the width (Yang et al. 2022; the `mup`
package's MuAdam / MuSGD rules): Adam-like optimizers (adam, adamw, lion, rmsprop, muon's AdamW
part) lr/m on hidden matrices and lr on embeddings, biases, norms and the readout; sgd lr on
hidden matrices and lr·m on those vector-like tensors; Muon's hidden matrices keep Muon's lr;
weight decay divided by the same factor (lr·wd unchanged). Details in `budgetlm.optim.groups`.

Every param group carries `base_lr` (its peak lr) so `set_lr` scales all groups, Muon's and
AdamW's alike, by one schedule factor. State dicts are plain `torch.optim.Optimizer` state dicts,
so `opt.load_state_dict(opt2.state_dict())` resumes bit-exactly (save/load through `torch.save`, as
a checkpoint does: a live state dict shares tensors with its optimizer).
"""

from budgetlm.optim.build import build_optimizer
from budgetlm.optim.groups import HEAD_NAMES, muon_split, param_groups
from budgetlm.optim.optimizers import Lamb, Lion, MuonWithAdamW
from budgetlm.optim.schedules import clip_grad_norm, lr_factor, set_lr

__all__ = [
    "HEAD_NAMES",
    "Lamb",
    "Lion",
    "MuonWithAdamW",
    "build_optimizer",
    "clip_grad_norm",
    "lr_factor",
    "muon_split",
    "param_groups",
    "set_lr",
]

"""One trial in its own capped child process: started (spawned or forked from a warm server),
watched (metrics, pruning, hard limits) and classified by how it ended.

Modules: `caps` (the trial cap), `launch` (spawn or fork server), `child` (the child's entry
point: the trainer's API), `process` (run and watch one trial). Nothing heavy is imported with
the package: torch loads in the child.
"""

from budgetlm.runner.caps import TrialCap
from budgetlm.runner.launch import SpawnLauncher, make_launcher, ready
from budgetlm.runner.process import Outcome, classify_exit, run_trial_process

__all__ = ["Outcome", "SpawnLauncher", "TrialCap", "classify_exit", "make_launcher", "ready",
           "run_trial_process"]

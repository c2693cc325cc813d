"""The tuning loop: an Optuna study driven by ask/tell, one subprocess per trial.

`run_study(study)` opens (or resumes: load_if_exists) the study in its storage, fails stale
trials of dead workers (and enqueues their parameters again), then runs `workers` threads; each
claims a trial (budget permitting), samples its parameters, builds and validates the config,
rejects what the estimate says cannot fit in memory or take one step within the cap (PRUNED,
never launched), runs the rest in a child process with a hard cap, reports intermediate values
on the cap's axis to the pruner, and tells the storage how the trial ended. Failures of any
kind are recorded with their reason; the study goes on. Ctrl-C stops the children, marks their
trials failed and re-raises (exit 130). At the end it writes the outputs (see `report`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import signal
import statistics
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from budgetlm.config import with_overrides
from budgetlm.errors import UserError
from budgetlm.runner.process import Outcome, run_trial_process
from budgetlm.tune import storage as st
from budgetlm.tune.spec import AXIS_SCALE, CategoricalParam, FloatParam, Study
from budgetlm.tune.trials import build_trial_config, infeasible, short_params

OBJECTIVE_FROM_RESULT = {
    "val_bpb": lambda r, a: r.get("val_bpb"),
    "val_loss": lambda r, a: r.get("val_loss"),
    "cost": lambda r, a: r.get("model_flops"),
    "flops": lambda r, a: r.get("model_flops"),
    "params": lambda r, a: r.get("params"),
    "seconds": lambda r, a: r.get("train_seconds"),
    "tokens": lambda r, a: r.get("tokens"),
    "memory": lambda r, a: a.get("memory_estimate"),
}


STALE_CHECK_SECONDS = 120.0


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*(constant_liar|multivariate|group).*")


def make_sampler(study: Study, seed: int) -> Any:
    import optuna

    s = study.spec.sampler
    n = s.n_startup_trials
    kw: dict[str, Any] = {"seed": seed}
    if s.type == "tpe":
        return optuna.samplers.TPESampler(
            **kw, n_startup_trials=10 if n is None else n, multivariate=True,
            constant_liar=True,
        )
    if s.type == "random":
        return optuna.samplers.RandomSampler(**kw)
    if s.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("sampler: cmaes needs the `cmaes` package (pip install cmaes)") \
                from None
        return optuna.samplers.CmaEsSampler(**kw, n_startup_trials=1 if n is None else n)
    if s.type == "gp":
        return optuna.samplers.GPSampler(**kw, n_startup_trials=10 if n is None else n)
    budget = study.spec.budget.trials or 40
    return optuna.samplers.NSGAIISampler(**kw, population_size=max(4, min(50, budget // 4)))


def make_pruner(study: Study) -> Any:
    import optuna

    spec = study.spec
    p, cap = spec.pruner, spec.trial_cap
    scale = AXIS_SCALE[cap.kind]
    if p.type == "none" or spec.multi:
        return optuna.pruners.NopPruner()
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=int(p.warmup * scale)
        )
    min_res = p.min_resource if p.min_resource is not None else cap.value / 9
    min_r = max(1, int(round(min_res * scale)))
    if p.type == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_r, reduction_factor=p.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=min_r, max_resource=cap.axis_max, reduction_factor=p.reduction_factor
    )


def open_study(study: Study, create: bool = True, seed: int | None = None) -> tuple[Any, bool]:
    """(optuna Study, created by this call). create=False raises UserError if it is missing."""
    import optuna

    quiet_optuna()
    spec = study.spec
    url = study.storage_url
    if not create and not st.storage_exists(url):
        raise UserError(f"study {spec.name}: no storage at {url} (run budgetlm tune first)")
    storage = st.open_storage(url, create=create)
    sampler = make_sampler(study, spec.seed if seed is None else seed)
    pruner = make_pruner(study)
    try:
        obj = st.retry(optuna.load_study, study_name=spec.name, storage=storage,
                       sampler=sampler, pruner=pruner)
        created = False
    except KeyError:
        if not create:
            raise UserError(f"study {spec.name}: not found in {url}") from None
        try:
            obj = st.retry(
                optuna.create_study, study_name=spec.name, storage=storage, sampler=sampler,
                pruner=pruner, directions=["minimize"] * len(spec.objectives),
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            obj = st.retry(optuna.load_study, study_name=spec.name, storage=storage,
                           sampler=sampler, pruner=pruner)
            created = False
    if len(obj.directions) != len(spec.objectives):
        raise UserError(
            f"objective: the study {spec.name} in {url} has {len(obj.directions)} objective(s), "
            f"the file {len(spec.objectives)}; use another name or storage"
        )
    if created:
        st.retry(obj.set_metric_names, spec.objectives)
        st.retry(obj.set_user_attr, "cap", {"kind": spec.trial_cap.kind,
                                            "value": spec.trial_cap.value})
    return obj, created


def axis_step(units: float, axis_max: int, grid: int) -> int:
    """The reporting step of a resource value: snapped down to a grid of `grid` cells over the
    cap, so trials report at the same steps (MedianPruner compares values at equal steps)."""
    cell = math.floor(units * grid / axis_max + 1e-9)
    return int(round(cell * axis_max / grid))


class _FileLock:
    """A lock shared by the threads of this process and the processes of this host."""

    def __init__(self, path: Path):
        self.path = path
        self.thread_lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self.thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)


class Tuner:
    """State shared by the worker threads, the live table and the final summary."""

    def __init__(self, study: Study, workers: int | None = None, log: Any = None):
        self.study = study
        self.spec = study.spec
        self.workers = workers or self.spec.workers
        self.log = log  # callable(str) for one-line events, or None
        self.stop = threading.Event()
        self.lock = _FileLock(study.outdir / ".tune.lock")
        self.rows: dict[int, dict[str, Any]] = {}
        self.rows_lock = threading.Lock()
        self.walls: list[float] = []
        self.t_start = time.monotonic()
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.profile: Any = None
        self.obj: Any = None
        self.child_pids: dict[int, int] = {}
        self.launcher: Any = None
        self.last_stale_check = 0.0

    # -- setup ------------------------------------------------------------------------------
    def prepare(self) -> None:
        from budgetlm.hardware import load_profile
        from budgetlm.runner.launch import make_launcher, ready

        spec = self.spec
        self.study.outdir.mkdir(parents=True, exist_ok=True)
        # The fork server imports torch while we measure/load the profile, data and storage.
        self.launcher = make_launcher(spec.launcher, log=self.study.outdir / "forkserver.log")
        self.profile = load_profile()
        if not any(k.startswith("data.") for k in spec.space):
            from budgetlm.config import DataConfig
            from budgetlm.data import load_corpus

            seq = None if "model.seq_len" in spec.space else self.study.base["model"]["seq_len"]
            load_corpus(DataConfig(**self.study.base["data"]), seq_len=seq)  # warm the cache
        with self.lock.hold():
            probe, created = open_study(self.study, create=True)
            n_before = len(st.retry(probe.get_trials, deepcopy=False))
            seed = self.spec.seed
            if not created or n_before:
                key = f"{seed}:{n_before}:{st.hostname()}:{os.getpid()}"
                seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
            self.obj, _ = open_study(self.study, create=True, seed=seed)
            self._fail_stale()
            if spec.enqueue and not self.obj.user_attrs.get("enqueued"):
                for params in spec.enqueue:
                    st.retry(self.obj.enqueue_trial, params, skip_if_exists=True)
                st.retry(self.obj.set_user_attr, "enqueued", True)
        self.launcher = ready(self.launcher)
        if self.launcher.name != spec.launcher:
            self.notes.append(f"launcher: {spec.launcher} unavailable, trials are spawned")

    def _fail_stale(self) -> None:
        """Fail RUNNING trials of dead workers (here or, by heartbeat, elsewhere); rerun them."""
        self.last_stale_check = time.monotonic()
        for t, why in st.fail_stale_trials(self.obj):
            self.notes.append(f"trial {t.number} failed: {why}; its parameters run again")
            if self.log is not None:
                self.log(self.notes[-1])
            if t.params:
                st.retry(self.obj.enqueue_trial, t.params, user_attrs={"retry_of": t.number})

    def _launcher(self) -> Any:
        """The fork server, or spawning if it has died (it should not; a trial cannot kill it)."""
        dead = getattr(self.launcher, "dead", None)
        if dead is not None and dead():
            from budgetlm.runner.launch import SpawnLauncher

            self.notes.append("the trial fork server died; trials are spawned from now on")
            self.launcher = SpawnLauncher()
        return self.launcher

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None

    # -- budget ----------------------------------------------------------------------------
    def _budget_left(self) -> bool:
        from optuna.trial import TrialState

        b = self.spec.budget
        if b.time is not None:
            elapsed = time.monotonic() - self.t_start
            typical = statistics.median(self.walls) if self.walls else 0.0
            if elapsed >= b.time or elapsed + typical > b.time:
                return False
        if b.trials is not None:
            trials = st.retry(self.obj.get_trials, deepcopy=False)
            used = sum(
                1 for t in trials
                if t.state != TrialState.WAITING
                and t.user_attrs.get("outcome") not in ("stale", "interrupted")
            )
            if used >= b.trials:
                return False
        return True

    def claim(self) -> Any:
        """A new RUNNING trial with this worker's identity, or None when the budget is spent."""
        with self.lock.hold():
            if self.stop.is_set():
                return None
            if time.monotonic() - self.last_stale_check > STALE_CHECK_SECONDS:
                self._fail_stale()  # a worker on another machine may have died meanwhile
            if not self._budget_left():
                return None
            trial = st.retry(self.obj.ask)
            for k, v in st.worker_attrs().items():
                st.retry(trial.set_user_attr, k, v)
            return trial

    # -- one trial -------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, d in self.spec.space.items():
            if isinstance(d, FloatParam):
                params[key] = trial.suggest_float(key, d.low, d.high, log=d.log, step=d.step)
            elif isinstance(d, CategoricalParam):
                params[key] = trial.suggest_categorical(key, d.choices)
            else:
                params[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
        return params

    def _row(self, number: int, **kw: Any) -> None:
        with self.rows_lock:
            self.rows.setdefault(number, {"number": number}).update(kw)

    def _threads(self, cfg: Any) -> int | None:
        """Torch threads of a trial: the study's `threads`, else the config's train.threads,
        else (on a CPU, OMP_NUM_THREADS unset) this machine's cores shared by the workers."""
        if self.spec.threads is not None:
            return self.spec.threads
        if cfg.train.threads is not None:
            return int(cfg.train.threads)
        if "OMP_NUM_THREADS" in os.environ or self.profile.device != "cpu":
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
        return max(1, cores // self.workers)

    def _env(self, worker: int, threads: int | None) -> dict[str, str]:
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        gpus = self.profile.gpu_count if self.profile.device == "cuda" else 0
        if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in env:
            env["CUDA_VISIBLE_DEVICES"] = str(worker % gpus)
        return env

    def _share(self) -> int:
        if self.profile.device == "cuda":
            return max(1, math.ceil(self.workers / max(1, self.profile.gpu_count)))
        return self.workers

    def run_one(self, trial: Any, worker: int) -> Outcome:
        spec = self.spec
        number = trial.number
        params = self.suggest(trial)
        self._row(number, params=short_params(params), state="RUNNING", started=time.monotonic())
        try:
            cfg = build_trial_config(self.study, params, number)
        except UserError as exc:
            return Outcome("pruned", "invalid", f"invalid config: {exc}")
        threads = self._threads(cfg)
        if threads is not None and cfg.train.threads != threads:
            cfg = with_overrides(cfg, [f"train.threads={threads}"])
        st.retry(trial.set_user_attr, "config", cfg.model_dump(mode="json"))
        from budgetlm.estimate import memory_breakdown

        mem = memory_breakdown(cfg, device=self.profile.device).total
        why = infeasible(cfg, spec.trial_cap, self.profile, share=self._share())
        if why is not None:
            return Outcome("pruned", "infeasible", why, attrs={"memory_estimate": mem})
        beat = [time.time()]

        def heartbeat() -> None:
            if time.time() - beat[0] >= st.HEARTBEAT_SECONDS:
                beat[0] = time.time()
                st.retry(trial.set_user_attr, "heartbeat", beat[0])

        target = spec.objectives[0]
        can_prune = not spec.multi and target in ("val_bpb", "val_loss") and (
            spec.pruner.type != "none"
        )
        kind, scale = spec.trial_cap.kind, AXIS_SCALE[spec.trial_cap.kind]
        grid = spec.evals or 10
        last_step = [-1]

        def report(rec: dict[str, Any]) -> str | None:
            value = rec.get(target)
            if not can_prune or value is None or not math.isfinite(float(value)):
                return None
            axis = {"time": rec.get("elapsed"), "tokens": rec.get("tokens"),
                    "flops": rec.get("flops"), "steps": rec.get("step")}[kind]
            step = axis_step(float(axis or 0.0) * scale, spec.trial_cap.axis_max, grid)
            if step <= last_step[0]:
                return None  # a second eval in the same grid cell adds nothing for the pruner
            last_step[0] = step
            st.retry(trial.report, float(value), step)
            if st.retry(trial.should_prune):
                where = f"{float(axis):.1f} s" if kind == "time" else f"{float(axis):.3g} {kind}"
                return f"pruned by {spec.pruner.type} at {where} ({target} {float(value):.4f})"
            return None

        def on_eval(rec: dict[str, Any]) -> None:
            self._row(number, value=rec.get(target), reached=rec.get("elapsed"))

        def on_start(pid: int) -> None:
            self.child_pids[number] = pid
            st.retry(trial.set_user_attr, "trainer_pid", pid)

        run_dir = self.study.outdir / "trials" / str(number)
        out = run_trial_process(
            cfg, run_dir, spec.trial_cap, report=report, stop=self.stop, heartbeat=heartbeat,
            on_start=on_start, on_eval=on_eval, env=self._env(worker, threads),
            launcher=self._launcher(),
        )
        self.child_pids.pop(number, None)
        out.attrs["memory_estimate"] = mem
        out.attrs["launcher"] = self.launcher.name
        if not self.stop.is_set() and out.kind != "interrupted":
            self.walls.append(float(out.attrs.get("wall_seconds") or 0.0))
        return out

    def finish(self, trial: Any, out: Outcome) -> None:
        import optuna
        from optuna.trial import TrialState

        attrs = {"outcome": out.kind, "reason": out.reason, **out.attrs}
        values = None
        if out.state == "complete":
            res = out.result or {}
            values = [OBJECTIVE_FROM_RESULT[o](res, attrs) for o in self.spec.objectives]
            if any(v is None or not math.isfinite(float(v)) for v in values):
                out = Outcome("fail", "failed", "objective missing from the result", out.result)
                attrs.update(outcome=out.kind, reason=out.reason)
                values = None
        for k, v in attrs.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            st.retry(trial.set_user_attr, k, v)
        if values is not None:
            vals = [float(v) for v in values]
            st.retry(self.obj.tell, trial, vals if self.spec.multi else vals[0])
        else:
            state = TrialState.PRUNED if out.state == "pruned" else TrialState.FAIL
            try:
                st.retry(self.obj.tell, trial, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
        if out.kind == "interrupted" and trial.params:  # not the config's fault: run it again
            st.retry(self.obj.enqueue_trial, trial.params, user_attrs={"retry_of": trial.number})
        self._row(
            trial.number, state={"complete": "COMPLETE", "pruned": "PRUNED"}.get(out.state, "FAIL"),
            value=values[0] if values else self.rows.get(trial.number, {}).get("value"),
            reason=out.reason, kind=out.kind, wall=attrs.get("wall_seconds"),
        )
        if self.log is not None:
            v = f" {self.spec.objectives[0]} {float(values[0]):.4f}" if values else ""
            self.log(
                f"trial {trial.number} {out.state}{v} · {out.reason} · "
                f"{self.rows[trial.number].get('params', '')}"
            )

    # -- workers ---------------------------------------------------------------------------
    def worker(self, index: int) -> None:
        consecutive = 0
        while not self.stop.is_set():
            try:
                trial = self.claim()
            except Exception as exc:  # storage trouble: record it, end this worker
                self.errors.append(f"worker {index}: {type(exc).__name__}: {exc}")
                return
            if trial is None:
                return
            try:
                out = self.run_one(trial, index)
                consecutive = 0
            except Exception as exc:  # a tuner bug must not leave the trial RUNNING
                consecutive += 1
                tb = traceback.format_exc()
                self.errors.append(tb)
                with (self.study.outdir / "tune-errors.log").open("a") as f:
                    f.write(f"trial {trial.number}:\n{tb}\n")
                out = Outcome("fail", "failed", f"tuner error: {type(exc).__name__}: {exc}")
            try:
                self.finish(trial, out)
            except Exception:
                self.errors.append(traceback.format_exc())
                return
            if consecutive >= 3:
                return

    def run(self, display: Any = None) -> None:
        """Run the workers until the budget is spent; Ctrl-C/SIGTERM -> KeyboardInterrupt."""
        threads = [
            threading.Thread(target=self.worker, args=(i,), name=f"tune-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        restore: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt

            for sig in (signal.SIGINT, signal.SIGTERM):
                restore[sig] = signal.signal(sig, on_signal)
        try:
            for t in threads:
                t.start()
                time.sleep(0.05)
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.25)
                if display is not None:
                    display()
        except KeyboardInterrupt:
            self.stop.set()
            deadline = time.monotonic() + 60
            for t in threads:
                with contextlib.suppress(KeyboardInterrupt):
                    t.join(timeout=max(0.1, deadline - time.monotonic()))
            raise
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start


def live_table(tuner: Tuner) -> Any:
    """The rich table shown while the study runs: the latest trials and the budget."""
    from rich import box
    from rich.table import Table

    spec = tuner.spec
    target = spec.objectives[0]
    with tuner.rows_lock:
        rows = [dict(r) for r in tuner.rows.values()]
    done = [r for r in rows if r.get("state") == "COMPLETE" and r.get("value") is not None]
    best = min(done, key=lambda r: r["value"]) if done else None
    budget = []
    if spec.budget.trials:
        budget.append(f"{len(rows)}/{spec.budget.trials} trials this run")
    if spec.budget.time:
        budget.append(f"{tuner.elapsed():.0f}/{spec.budget.time:g} s")
    best_txt = f" · best {target} {best['value']:.4f} (trial {best['number']})" if best else ""
    t = Table(title=f"tuning {spec.name} · {' · '.join(budget)}{best_txt}",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("#", "state", target, "s", "params", "reason"):
        t.add_column(col, justify="left" if col in ("state", "params", "reason") else "right",
                     no_wrap=col != "reason", overflow="ellipsis")
    now = time.monotonic()
    for r in sorted(rows, key=lambda r: r["number"])[-18:]:
        secs = r.get("wall")
        if secs is None and r.get("started") is not None:
            secs = now - r["started"]
        value = r.get("value")
        t.add_row(
            str(r["number"]), r.get("state", ""),
            f"{value:.4f}" if isinstance(value, float) else "-",
            f"{secs:.0f}" if secs is not None else "",
            r.get("params", ""), (r.get("reason") or "")[:70],
        )
    return t

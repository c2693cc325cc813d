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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from budgetlm.config import DataConfig, with_overrides
from budgetlm.data import load_corpus
from budgetlm.errors import UserError
from budgetlm.estimate import memory_breakdown
from budgetlm.hardware import load_profile
from budgetlm.runner import Outcome, SpawnLauncher, make_launcher, ready, run_trial_process
from budgetlm.tune import storage as st
from budgetlm.tune.params import suggest_params
from budgetlm.tune.pruning import PruneReporter
from budgetlm.tune.resources import trial_env, trial_threads, trials_per_device
from budgetlm.tune.samplers import make_pruner, make_sampler, quiet_optuna
from budgetlm.tune.spec import Study
from budgetlm.tune.trials import build_trial_config, infeasible, short_params

OBJECTIVE_FROM_RESULT = {
    "val_bpb": lambda r, a: r.get("val_bpb"),
    "val_loss": lambda r, a: r.get("val_loss"),
    "val_error": lambda r, a: classification_error(r),
    "cost": lambda r, a: r.get("model_flops"),
    "flops": lambda r, a: r.get("model_flops"),
    "params": lambda r, a: r.get("params"),
    "seconds": lambda r, a: r.get("train_seconds"),
    "tokens": lambda r, a: r.get("tokens"),
    "memory": lambda r, a: a.get("memory_estimate"),
}


def classification_error(result: dict[str, Any]) -> float | None:
    """1 - validation accuracy of the model a classification run keeps: the best eval's when
    the run restored it, else the last eval's; None for a language-model run."""
    best = result.get("best_eval") or {}
    acc = best.get("val_accuracy") if result.get("restored_best") else None
    if acc is None:
        acc = result.get("val_accuracy")
    return None if acc is None else 1.0 - float(acc)


STALE_CHECK_SECONDS = 120.0


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


class FileLock:
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
        self.lock = FileLock(study.outdir / ".tune.lock")
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
        """Start the launcher, load the profile and the data, open the study (failing stale
        trials, enqueuing the study file's parameter sets once)."""
        spec = self.spec
        st.make_storage_parent(self.study.storage_url)
        try:
            self.study.outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"study {spec.name}: cannot create the output folder "
                            f"{self.study.outdir} ({exc.strerror or exc})") from None
        # The fork server imports torch while we measure/load the profile, data and storage.
        self.launcher = make_launcher(spec.launcher, log=self.study.outdir / "forkserver.log")
        self.profile = load_profile()
        lm = self.study.base.get("task", "lm") == "lm"
        if lm and not any(k.startswith("data.") for k in spec.space):
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

    def current_launcher(self) -> Any:
        """The fork server, or spawning if it has died (it should not; a trial cannot kill it)."""
        dead = getattr(self.launcher, "dead", None)
        if dead is not None and dead():
            self.notes.append("the trial fork server died; trials are spawned from now on")
            self.launcher = SpawnLauncher()
        return self.launcher

    def close(self) -> None:
        """Stop the fork server, if any."""
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None

    # -- budget ----------------------------------------------------------------------------
    def _budget_left(self) -> bool:
        """Whether another trial may start: the time budget (less a typical trial) and the
        trials that count are not used up."""
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
    def _row(self, number: int, **kw: Any) -> None:
        with self.rows_lock:
            self.rows.setdefault(number, {"number": number}).update(kw)

    def run_one(self, trial: Any, worker: int) -> Outcome:
        """Sample, build, check and run one trial; how it ended (not yet told to the storage)."""
        spec = self.spec
        number = trial.number
        params = suggest_params(trial, self.spec.space)
        self._row(number, params=short_params(params), state="RUNNING", started=time.monotonic())
        try:
            cfg = build_trial_config(self.study, params, number)
        except UserError as exc:
            return Outcome("pruned", "invalid", f"invalid config: {exc}")
        threads = trial_threads(spec, cfg, self.profile, self.workers)
        if threads is not None and cfg.train.threads != threads:
            cfg = with_overrides(cfg, [f"train.threads={threads}"])
        st.retry(trial.set_user_attr, "config", cfg.model_dump(mode="json"))
        mem = memory_breakdown(cfg, device=self.profile.device).total
        why = infeasible(cfg, spec.trial_cap, self.profile,
                         share=trials_per_device(self.profile, self.workers))
        if why is not None:
            return Outcome("pruned", "infeasible", why, attrs={"memory_estimate": mem})
        out = self._launch(trial, cfg, trial_env(worker, threads, self.profile))
        out.attrs["memory_estimate"] = mem
        out.attrs["launcher"] = self.launcher.name
        if not self.stop.is_set() and out.kind != "interrupted":
            self.walls.append(float(out.attrs.get("wall_seconds") or 0.0))
        return out

    def _launch(self, trial: Any, cfg: Any, env: dict[str, str]) -> Outcome:
        """Run the trial's process, reporting to the pruner and the live table as it goes."""
        number = trial.number
        target = self.spec.objectives[0]

        def on_eval(rec: dict[str, Any]) -> None:
            self._row(number, value=rec.get(target), reached=rec.get("elapsed"))

        def on_start(pid: int) -> None:
            self.child_pids[number] = pid
            st.retry(trial.set_user_attr, "trainer_pid", pid)

        out = run_trial_process(
            cfg, self.study.outdir / "trials" / str(number), self.spec.trial_cap,
            report=PruneReporter(trial, self.spec), stop=self.stop,
            heartbeat=st.Heartbeat(trial), on_start=on_start, on_eval=on_eval, env=env,
            launcher=self.current_launcher(),
        )
        self.child_pids.pop(number, None)
        return out

    def finish(self, trial: Any, out: Outcome) -> None:
        """Tell the storage how the trial ended (its values, or PRUNED/FAIL with the reason)."""
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
        """One worker thread: claim, run and finish trials until the budget is spent."""
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
        """Seconds since the tuner started."""
        return time.monotonic() - self.t_start

"""Hyperparameter tuning on a budget: a study file -> an Optuna study of capped trials.

    budgetlm tune STUDY.yaml [--workers N] [--storage URL] [--set key=value]...
    budgetlm report STUDY.yaml          # tables, CSV/Parquet, best.yaml, report.html
    budgetlm export STUDY.yaml [--trial N] -o FILE
    budgetlm tune --around PLAN.yaml [--share 0.2]   # µP proxies of a plan, then the plan

Modules: `params`, `schema` and `spec` (the study file: distributions, the validated file, a
loaded study), `trials` (trial configs, feasibility), `storage` (optuna storages, SQLite
retries, stale trials), `samplers` (sampler and pruner), `pruning` (reporting to the pruner),
`resources` (threads and GPUs per trial), `study` (the ask/tell loop, workers), `live` (the
table while it runs), `export`, `report`, `report_html` and `plots` (outputs), `api` (what the
command line calls); `around` (the study of µP proxies of a plan), `around_run` (transfer and
final run), `around_files` and `around_report` (around.json and its table). Each trial runs
in its own process (budgetlm.runner). Optuna, pandas and torch load only when needed.
"""

from budgetlm.tune.api import export_trial, report_study, run_study
from budgetlm.tune.report import render_summary
from budgetlm.tune.spec import Study, StudySpec, load_study, study_json_schema

__all__ = ["Study", "StudySpec", "export_trial", "load_study", "render_summary", "report_study",
           "run_study", "study_json_schema"]

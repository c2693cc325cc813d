"""`budgetlm schema`: the JSON Schema of a file budgetlm reads or writes (for editors)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from budgetlm.cli.root import app, guarded
from budgetlm.errors import UserError

JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _run_schema() -> str:
    from budgetlm.config import json_schema

    return json_schema()


def _study_schema() -> str:
    try:
        from budgetlm.tune import study_json_schema
    except ImportError:
        raise UserError("schema study: the tuner is not available in this build") from None
    return study_json_schema()


def _model_schema(model: type) -> str:
    """The JSON Schema of a pydantic model, tagged with the draft it follows."""
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    schema["$schema"] = JSON_SCHEMA_DRAFT
    return json.dumps(schema, indent=2)


def _plan_schema() -> str:
    from budgetlm.plan.files import PlanFile

    return _model_schema(PlanFile)


def _finetune_plan_schema() -> str:
    from budgetlm.plan.finetune_files import FinetunePlanFile

    return _model_schema(FinetunePlanFile)


def _result_schema() -> str:
    from budgetlm.train.result import ResultFile

    return _model_schema(ResultFile)


def _fit_schema() -> str:
    from budgetlm.calibrate.files import FitFile

    return _model_schema(FitFile)


def _around_schema() -> str:
    from budgetlm.tune.around_files import AroundFile

    return _model_schema(AroundFile)


SCHEMAS: dict[str, Callable[[], str]] = {
    "run": _run_schema,
    "study": _study_schema,
    "plan": _plan_schema,
    "plan-finetune": _finetune_plan_schema,
    "result": _result_schema,
    "fit": _fit_schema,
    "around": _around_schema,
}


@app.command()
@guarded
def schema(
    kind: Annotated[
        str,
        typer.Argument(
            help="run (RunConfig), study (StudySpec), plan (plan.json), plan-finetune "
            "(plan.json of plan --finetune), result (result.json), fit (fit.json) "
            "or around (around.json of tune --around)"
        ),
    ] = "run",
) -> None:
    """Print the JSON Schema of a config or output file (for editor completion)."""
    render = SCHEMAS.get(kind)
    if render is None:
        raise UserError(f"schema: unknown name {kind!r}; expected one of {', '.join(SCHEMAS)}")
    sys.stdout.write(render() + "\n")

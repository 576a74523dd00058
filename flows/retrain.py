"""The retrain flow: source -> ingest -> validate (blocking gate) -> clean -> features -> train.

Thin wiring: every stage is `dvc repro STAGE@PROFILE` (so unchanged inputs are skipped and
the same code runs under DVC alone), and every stage gets a nested MLflow run under one parent
run per flow run. Runs on Prefect's ephemeral server, or on `prefect server start` when
PREFECT_API_URL is set.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.states import Failed, State

from components import dvc_runner, pipeline, tracking
from components.config import load_config
from components.evaluation.frozen import SnapshotError
from components.evaluation.gates import GateFailed, GateInputError
from components.registry.names import VERDICT_FAIL, VERDICT_PASS
from components.retrain_lock import RetrainBusy, one_retrain_at_a_time  # noqa: F401 - RetrainBusy: part of this module's API
from components.run_summary import RetrainResult, format_summary
from components.validation.report import failures_section, list_failed

# Stages whose failure can be transient (network, a killed worker) are retried; a failed data
# gate is deterministic and never retried.
RETRIES = {"source": 2, "train_preference": 1, "train_generator": 1}
SUMMARY_FIGURES = 30  # per stage, in the flow run's log


class DataGateFailed(RuntimeError):
    """The batch failed Great Expectations validation; nothing downstream ran.

    The gate doing its job, not a crash: the flow returns it as its Failed state (no traceback
    in the log), and calling the flow raises it. The message is a few lines (the flow run's state
    and the CLI repeat it); the failures are logged once and the whole report is an artifact."""


class ReleaseGateFailed(GateFailed):
    """The release gate rejected this retrain's models (below a floor, past a guardrail, or worse
    than the champion): they are registered with their verdict and no alias moved.

    The gate doing its job, not a crash: the release task and the flow return it as their Failed
    state (no traceback in the log), and calling the flow raises it. Its message is the failed
    rules and where the whole report is; the report itself is logged once."""

    def __init__(self, rejected: GateFailed, where: str):
        # GateFailed's own __init__ words the message from the rules: this one adds the location.
        RuntimeError.__init__(self, f"{rejected}\n{where}")
        self.report, self.results = rejected.report, rejected.results


class ParamsNotTracked(ValueError):
    """A params file other than the one every DVC stage reads: it would apply to some steps only."""


@task(task_run_name="{stage}@{profile}")
def run_stage(
    stage: str, profile: str, project_dir: str, force: bool = False, parent_run_id: str = "", timeout_s: float | None = None
) -> dvc_runner.ReproResult | State:
    logger = get_run_logger()
    env = {pipeline.PARENT_RUN_ENV: parent_run_id} if parent_run_id else None
    try:
        result = dvc_runner.repro(stage, profile, cwd=project_dir, force=force, env=env, timeout_s=timeout_s)
    except dvc_runner.StageFailed as failure:
        rejection = _gate_rejection(stage, profile, project_dir)
        if not rejection:
            raise  # a crash, not a verdict: Prefect logs it with its traceback
        # A returned Failed state is Prefect's way to fail a run that did not crash: no traceback;
        # the flow's state.result() raises `failure` (the data).
        return Failed(message=rejection, data=failure)
    logger.info("%s: %s", result.target, "unchanged, skipped by DVC" if result.skipped else "ran")
    return result


def _gate_rejection(stage: str, profile: str, project_dir: str) -> str:
    """Why the data gate rejected the batch, when a failed validate stage left that verdict
    (its summary says success: false); '' for any other failure (DVC removes a stage's outputs
    before it runs, so a summary there is this run's)."""
    if stage != "validate":
        return ""
    try:
        summary = pipeline.read_summary(load_config(Path(project_dir) / "params.yaml", profile), stage)
    except (FileNotFoundError, ValueError):
        return ""
    return f"data gate rejected the batch: {_gate_verdict(summary)}" if summary.get("success") is False else ""


def _gate_verdict(summary: dict) -> str:
    failed = summary.get("failed") or []
    if not failed:
        return "the batch could not be validated"
    return f"{len(failed)} of {summary.get('evaluated_expectations', '?')} checks failed ({list_failed(failed, 5)})"


def _retry_unless_timed_out(task, task_run, state) -> bool:
    """A stage that ran past its time limit would only hang again: no retry."""
    failure = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(failure, dvc_runner.StageTimedOut)


def _stage_task(stage: str):
    return run_stage.with_options(retries=RETRIES.get(stage, 0), retry_delay_seconds=5, retry_condition_fn=_retry_unless_timed_out)


@task(task_run_name="release@{profile}")
def release(profile: str, params_path: str, manifests: list[dict], project_dir: str, parent_run_id: str) -> dict | State:
    """Gate every trained model against the champion, register them, alias the release."""
    from components.registry import release_candidates

    cfg = load_config(Path(project_dir) / params_path, profile)
    try:
        outcome = release_candidates(
            cfg,
            manifests,
            project_dir=project_dir,
            flow_run_id=str(flow_run.get_id() or ""),
            parent_run_id=parent_run_id,
        )
    except GateFailed as failed:
        _publish(f"release-gate-{profile}", failed.report, f"Release gate report ({profile}): FAILED")
        get_run_logger().error("release gate failed; no alias was moved (the models are registered with their verdict):\n%s", failed.report)
        # A verdict, not a crash: a returned Failed state fails the task run without a traceback;
        # the flow's state.result() raises `failed` (the data).
        return Failed(message=str(failed), data=failed)
    _publish(f"release-gate-{profile}", outcome.report, f"Release gate report ({profile}): release {outcome.release}")
    return outcome.to_dict()


def _publish(key: str, markdown: str, description: str) -> None:
    """A markdown artifact on the flow run's page in the Prefect UI (latest under its key)."""
    import re

    from prefect.artifacts import create_markdown_artifact

    # Prefect accepts only lowercase letters, digits and dashes in a key (a profile may be `My_Shop`).
    create_markdown_artifact(key=re.sub(r"[^a-z0-9-]+", "-", key.lower()), markdown=markdown, description=description)


def tracked_params(params_path: str | Path, project_dir: str | Path = ".") -> Path:
    """The resolved params file, which must be the params.yaml next to dvc.yaml: every DVC stage
    reads (and DVC tracks) that one; another file would be read here and ignored by every stage.
    Raises ParamsNotTracked. The CLI checks it before starting Prefect, so the refusal is one line."""
    params_file = (Path(project_dir) / params_path).resolve()
    if params_file.name != "params.yaml" or not (params_file.parent / "dvc.yaml").is_file():
        raise ParamsNotTracked(
            f"retrain runs the DVC pipeline, whose stages read the params.yaml next to dvc.yaml; "
            f"{params_file} is not that file. Edit the project's params.yaml, or run single stages "
            f"with `copyflow stage STAGE --params FILE`"
        )
    return params_file


@flow(name="retrain", log_prints=True)
def retrain(
    profile: str = "quick",
    params_path: str = "params.yaml",
    project_dir: str = ".",
    force: bool = False,
    stages: list[str] | None = None,
    register_release: bool = True,
) -> RetrainResult | State:
    """Run the pipeline for one params.yaml profile; returns what `copyflow retrain` prints.

    After training, `register_release` gates the new models against the champion on the frozen
    evaluation set and registers a release (promoted automatically only if params say so and
    no champion exists yet). A failing data gate or release gate fails the run. A batch the data
    gate rejects, or a release the release gate rejects, is returned as a Failed state, not
    raised: calling the flow raises its DataGateFailed or ReleaseGateFailed all the same,
    without Prefect logging a traceback for a verdict.
    """
    params_file = tracked_params(params_path, project_dir)
    root = params_file.parent  # the project is where its params.yaml is, whatever the current directory
    cfg = load_config(params_file, profile)
    with one_retrain_at_a_time(cfg):
        try:
            return _retrain(cfg, root, params_file, stages, force, register_release)
        except (DataGateFailed, ReleaseGateFailed) as rejected:  # raised through _retrain, so its MLflow run ended FAILED
            return Failed(message=str(rejected), data=rejected)


def _retrain(cfg, root: Path, params_file: Path, stages: list[str] | None, force: bool, register_release: bool) -> RetrainResult:
    profile = cfg.profile
    experiment_id = tracking.configure(cfg)
    for run_id in tracking.end_orphaned_runs(experiment_id, "retrain", profile):
        get_run_logger().warning("MLflow run %s was left RUNNING by a retrain whose process died: marked FAILED", run_id)
    stages = list(stages or pipeline.stages_for(cfg))
    result = RetrainResult(profile=profile)
    tags = {
        "profile": profile,
        "git_commit": tracking.git_commit(root),
        "prefect_flow_run_id": str(flow_run.get_id() or ""),
        "kind": "retrain",
        **tracking.process_tags(),
    }
    with mlflow.start_run(run_name=f"retrain-{profile}", tags=tags) as parent:
        result.mlflow_run_id = parent.info.run_id
        # Every knob, not only the profile: the data, cleaning and feature settings shape the models too.
        mlflow.log_params({**tracking.config_params(cfg), "stages": ",".join(stages)})
        for stage in stages:
            try:
                # As a state: a stage that returns its Failed state (a rejected batch) raises here too.
                repro = _stage_task(stage)(stage, profile, str(root), force, parent.info.run_id,
                                           cfg.flow.stage_timeout_minutes * 60, return_state=True).result()
            except dvc_runner.StageFailed as failure:
                _record_failure(cfg, stage, failure, parent.info.run_id)
                raise  # unreachable for validate: _record_failure raises DataGateFailed
            summary = pipeline.read_summary(cfg, stage)
            result.stages[stage] = {"skipped": repro.skipped, "summary": summary}
            get_run_logger().info("%s@%s: %s", stage, profile, _figures(summary))
            if stage in pipeline.TRAINING_STAGES:
                continue  # the training process logged its own nested run
            tracking.log_stage(
                parent.info.run_id,
                stage,
                summary,
                lock=dvc_runner.stage_lock(stage, profile, root),
                skipped=repro.skipped,
                artifacts=_stage_reports(cfg, stage),
                tags={"profile": profile, **({"ge.verdict": VERDICT_PASS} if stage == "validate" else {})},
            )
            if stage == "validate":
                mlflow.set_tag("ge.verdict", VERDICT_PASS)
        mlflow.set_tag("dvc.lock.sha256", dvc_runner.lock_digest(root))
        if (root / "dvc.lock").exists():
            # Every retrain rewrites dvc.lock, so git does not keep it: the run does. With it,
            # `dvc checkout` restores this run's data and models from the DVC cache.
            mlflow.log_artifact(str(root / "dvc.lock"))
        manifests = [result.summary(s) for s in stages if s in pipeline.TRAINING_STAGES]
        # The training runs' key figures on the retrain run too: retrains compare from their parent runs.
        headline = tracking.headline_metrics(manifests)
        if headline:
            mlflow.log_metrics(headline)
        if register_release and manifests:
            try:
                # As a state: a release task that returns its Failed state (a rejection) raises here too.
                result.release = release(profile, params_file.name, manifests, str(root), parent.info.run_id,
                                         return_state=True).result()
            except (GateFailed, GateInputError, SnapshotError) as failure:
                mlflow.set_tags({"failed_stage": "release", "error": _first_lines(str(failure))})
                if isinstance(failure, GateFailed):
                    raise ReleaseGateFailed(failure, _release_report_location(profile, parent.info.run_id)) from failure
                raise
            mlflow.set_tag("release", str(result.release.get("release") or ""))
    summary = format_summary(result, tracking.tracking_uri(cfg))
    _publish(f"retrain-{profile}", f"```\n{summary}\n```", f"copyflow retrain summary ({profile})")
    get_run_logger().info("retrain done: summary in the artifact retrain-%s; MLflow run %s", profile, result.mlflow_run_id)
    return result


def _figures(summary: dict) -> str:
    """What a stage did, in one line of the Prefect log: its summary's first numbers
    (rows, removals, metrics), not the DVC chatter and library warnings of its output."""
    figures = tracking.flatten_numbers(summary)
    if not figures:  # a stage that reports no number (pseudonym_key: the key's fingerprint)
        return ", ".join(f"{k}={v}" for k, v in summary.items() if k != "stage" and isinstance(v, str))
    shown = ", ".join(f"{k}={v:g}" for k, v in list(figures.items())[:SUMMARY_FIGURES])
    return shown + (f", … ({len(figures) - SUMMARY_FIGURES} more in MLflow)" if len(figures) > SUMMARY_FIGURES else "")


def _stage_reports(cfg, stage: str) -> list[Path]:
    if stage == "validate":
        directory = pipeline.stage_output_dir(cfg, stage)
        return [directory / "report.md", directory / "report.json"]
    return []


def _whole_lines(lines: list[str], limit: int) -> list[str]:
    """The leading lines of `lines` that fit in `limit` characters with their newlines; at least
    the first (a cut at a fixed character count began mid-word; MLflow takes 8,000 per tag)."""
    kept, size = [], 0
    for line in lines:
        if kept and size + len(line) > limit:
            break
        kept.append(line)
        size += len(line) + 1
    return kept


def _last_lines(text: str, limit: int = 1000) -> str:
    """The end of a stage's output for an MLflow tag, where its error is, in whole lines."""
    return "\n".join(reversed(_whole_lines(text.strip().splitlines()[::-1], limit)))[-limit:]


def _first_lines(text: str, limit: int = 1000) -> str:
    """The start of an error message for an MLflow tag, where what failed is, in whole lines."""
    return "\n".join(_whole_lines(text.strip().splitlines(), limit))[:limit]


def _release_report_location(profile: str, parent_run_id: str) -> str:
    return (f"Report: the Prefect artifact release-gate-{profile} and gate/report.md of the MLflow run {parent_run_id} "
            f"(the models are registered with their verdict)")


def _record_failure(cfg, stage: str, failure: dvc_runner.StageFailed, parent_run_id: str) -> None:
    """Log what failed to MLflow (the GE report for the gate); the parent run ends FAILED as the
    exception leaves its `with` block."""
    logger = get_run_logger()
    summary: dict = {}
    try:
        summary = pipeline.read_summary(cfg, stage)
    except FileNotFoundError:
        pass
    tracking.log_stage(
        parent_run_id,
        stage,
        summary,
        artifacts=_stage_reports(cfg, stage),
        tags={"profile": cfg.profile, "error": _last_lines(str(failure)), **({"ge.verdict": VERDICT_FAIL} if stage == "validate" else {})},
        status="FAILED",
    )
    mlflow.set_tag("failed_stage", stage)
    if stage == "validate":
        mlflow.set_tag("ge.verdict", VERDICT_FAIL)
        report = pipeline.stage_output_dir(cfg, stage) / "report.md"
        text = report.read_text(encoding="utf-8") if report.exists() else failure.output
        verdict = _gate_verdict(summary)
        logger.error("data gate failed; no later stage ran and no model was touched.\n%s", failures_section(text) or text)
        _publish(f"data-gate-{cfg.profile}", text, f"Great Expectations report ({cfg.profile}): FAILED")
        raise DataGateFailed(
            f"Data validation failed for profile {cfg.profile!r}: {verdict}. The run stopped before training.\n"
            f"Report: {report} (also the Prefect artifact data-gate-{cfg.profile} and the MLflow run {parent_run_id})"
        ) from failure

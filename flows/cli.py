"""The `copyflow` command line: a thin layer over flows/ and components/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

INFRA = Path(__file__).resolve().parents[1] / "infra"

app = typer.Typer(help="copyflow: learn shopper preferences; write, rank and ship personalized copy.",
                  no_args_is_help=True, add_completion=False)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="params.yaml profile: quick | full | obd")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file")]


@app.callback()
def _setup() -> None:
    from components.tracking import disable_telemetry

    disable_telemetry()


def _config(params: Path, profile: str):
    from components.config import load_config

    try:
        return load_config(params, profile)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


@app.command()
def retrain(
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="re-run every stage even if DVC finds it unchanged")] = False,
) -> None:
    """Run the retrain flow (Prefect): source -> validate -> clean -> features -> train -> register."""
    from components.run_summary import format_summary
    from components.tracking import tracking_uri
    from flows.retrain import DataGateFailed
    from flows.retrain import retrain as retrain_flow

    from components.dvc_runner import StageFailed
    from components.evaluation.gates import GateFailed
    from components.registry.status import render_status, status

    cfg = _config(params, profile)
    try:
        result = retrain_flow(profile=profile, params_path=str(params), force=force)
    except (DataGateFailed, GateFailed, StageFailed) as exc:
        typer.secho(f"\nretrain failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo("\n" + format_summary(result, tracking_uri(cfg)))
    if result.release is not None:
        typer.echo("\n" + render_status(status(cfg)))


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Argument(help="folder with products/copies/users/events tables")],
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
    no_reference: Annotated[bool, typer.Option(help="skip drift checks against the last accepted batch")] = False,
) -> None:
    """Validate a data batch with the Great Expectations suites; exit 1 if it fails."""
    from components.validation.gate import validate_dir

    cfg = _config(params, profile)
    if not data_dir.is_dir():
        typer.secho(f"error: {data_dir} is not a directory", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    report = validate_dir(data_dir, cfg, reference={} if no_reference else None)
    typer.echo(report.to_text())
    raise typer.Exit(0 if report.success else 1)


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="source | ingest | validate | clean | features | train_*")],
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run one pipeline stage directly, without DVC or Prefect (what dvc.yaml calls)."""
    from components.pipeline import main

    raise typer.Exit(main([name, "--profile", profile, "--params", str(params)]))


@app.command("fetch-obd")
def fetch_obd(
    profile: ProfileOpt = "obd",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Download the Open Bandit Dataset sample (PyPI package obp, not installed) into data/external/obd."""
    from components.data.obd import fetch_obd as fetch

    cfg = _config(params, profile)
    path = fetch(cfg.paths.obd_dir, cfg.obd.version)
    typer.echo(f"Open Bandit Dataset sample ready in {path}. Next: copyflow retrain --profile obd")


@app.command()
def promote(
    release: Annotated[Optional[int], typer.Option(help="copyflow-release version (default: the challenger)")] = None,
    note: Annotated[Optional[str], typer.Option(help="why; recorded on the release")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would move, move nothing")] = False,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Make a release champion (all its models together) after re-checking its gate evidence."""
    from components.registry import PromotionRefused
    from components.registry.status import render_status, status
    from components.registry import promote as do_promote

    cfg = _config(params, profile)
    try:
        result = do_promote(cfg, release=release, dry_run=dry_run, note=note)
    except PromotionRefused as exc:
        typer.secho(f"promotion refused: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    if result.get("recheck_report"):
        typer.echo(result["recheck_report"])
    verb = "would promote" if dry_run else ("promoted" if result["changed"] else "kept")
    typer.echo(f"{verb} release {result['release']} (champion before: {result['replaces']})")
    typer.echo(render_status(status(cfg)))


@app.command()
def rollback(
    note: Annotated[Optional[str], typer.Option(help="why; recorded on the release")] = None,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Put the previous champion release back in one step."""
    from components.registry import PromotionRefused
    from components.registry.status import render_status, status
    from components.registry import rollback as do_rollback

    cfg = _config(params, profile)
    try:
        result = do_rollback(cfg, note=note)
    except PromotionRefused as exc:
        typer.secho(f"rollback refused: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"rolled back release {result['rolled_back']}; champion is release {result['release']} again")
    typer.echo(render_status(status(cfg)))


@app.command("status")
def status_command(profile: ProfileOpt = "quick", params: ParamsOpt = Path("params.yaml")) -> None:
    """Champion / challenger / previous release and models, with their key metrics."""
    from components.registry.status import render_status, status

    typer.echo(render_status(status(_config(params, profile))))


@app.command()
def compare(
    release: Annotated[Optional[int], typer.Option(help="release to compare (default: the challenger)")] = None,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Challenger vs champion on the frozen evaluation set: the gate report."""
    from components.registry import compare as do_compare

    typer.echo(do_compare(_config(params, profile), release=release))


@app.command()
def deploy() -> None:
    """Create the local process work pool and deploy prefect.yaml (retrain nightly, promote, rollback)."""
    raise typer.Exit(subprocess.call(["bash", str(INFRA / "deploy.sh")]))


@app.command()
def worker() -> None:
    """Run a Prefect worker on the local process pool (executes scheduled retrains and promotions)."""
    raise typer.Exit(subprocess.call(["bash", str(INFRA / "worker.sh")]))


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 5000,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start the MLflow UI on the embedded tracking store."""
    from components.tracking import artifact_root, tracking_uri

    cfg = _config(params, profile)
    uri = tracking_uri(cfg)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if artifact_root(uri):
        cmd += ["--default-artifact-root", artifact_root(uri)]
    typer.echo(f"MLflow UI on http://{host}:{port}  (store: {uri}); Ctrl-C stops it")
    raise typer.Exit(subprocess.call(cmd))


if __name__ == "__main__":
    app()

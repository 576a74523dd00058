"""The `copyflow` command line: a thin layer over flows/ and components/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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

    cfg = _config(params, profile)
    try:
        result = retrain_flow(profile=profile, params_path=str(params), force=force)
    except DataGateFailed as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo("\n" + format_summary(result, tracking_uri(cfg)))


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

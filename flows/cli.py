"""The `copyflow` command line: a thin layer over flows/ and components/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

INFRA = Path(__file__).resolve().parents[1] / "infra"
# `generate` decodes one shopper's copies as one batch (about 1 MB each): 20,000 ran out of memory
# with a traceback. Many products are a job for generate-batch.
MAX_COPIES_PER_REQUEST = 50

app = typer.Typer(help="copyflow: learn shopper preferences; write, rank and ship personalized copy.",
                  no_args_is_help=True, add_completion=False)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="params.yaml profile: quick | full | obd | shop")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file")]
UserOpt = Annotated[str, typer.Option("--user", help="user id (pseudonymized, or raw)")]
ProductOpt = Annotated[str, typer.Option("--product", help="product id")]
ToneOpt = Annotated[str, typer.Option("--tone", help="plain | lively | elegant | any")]
LengthOpt = Annotated[str, typer.Option("--length", help="short | medium | long | any (the corpus' length tertiles)")]


@app.callback()
def _setup() -> None:
    from components.tracking import disable_telemetry

    disable_telemetry()
    # Progress bars of artifact downloads drown the CLI's own output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The ephemeral Prefect server gets 20 s to start by default: too short on two busy cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _config(params: Path, profile: str):
    from components.config import config_error_text, load_config
    from components.tracking import tracking_uri

    try:
        cfg = load_config(params, profile)
        tracking_uri(cfg)  # refuses a profile whose own store the environment would override
        return cfg
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {config_error_text(exc, params, profile)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


def _require_prefect_server() -> None:
    """With PREFECT_API_URL set (`source .run/env`), the server must answer: after `make down`
    the flow would otherwise fail with a long traceback ending in "Failed to reach API"."""
    import os

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return  # Prefect starts an ephemeral server of its own
    import httpx

    try:
        # Any HTTP answer counts (Prefect Cloud or a gateway may answer 401/404 on /health), as
        # infra/prefect_api.sh and tracking.require_server judge: only no answer stops here.
        httpx.get(f"{url.rstrip('/')}/health", timeout=5)
    except httpx.HTTPError as exc:
        typer.secho(
            f"error: the Prefect server at PREFECT_API_URL={url} does not answer ({type(exc).__name__}). "
            "Start it with `make up`, or `unset PREFECT_API_URL` to run on an ephemeral server.",
            fg=typer.colors.RED, err=True,
        )
        raise typer.Exit(2) from exc


def _require_free_port(host: str, port: int) -> None:
    """Refuse in one line when something already listens there. `mlflow server` only logs
    uvicorn's "address already in use" and exits 0, and the URL it printed then shows the other
    server, possibly another profile's store."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closed port's TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why, fix = "is already in use by another process", "Stop that process or pick another --port."
            else:  # an address this machine does not have, or a name that does not resolve
                why, fix = f"cannot be listened on ({exc.strerror})", "Pick another --host."
            typer.secho(f"error: port {port} on {host} {why}; nothing was started. {fix}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from exc


def _registry_config(params: Path, profile: str):
    """The config of a command that reads or moves registry aliases: its store must exist."""
    from components.tracking import StoreUnreachable, require_store

    cfg = _config(params, profile)
    try:
        require_store(cfg)
    except (FileNotFoundError, StoreUnreachable) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    return cfg


@contextmanager
def _registry_errors(verb: str) -> Iterator[None]:
    """Refusals and registry failures of promote / rollback / compare as one red line, exit 1."""
    from components.registry import PromotionRefused, RegistryInconsistent
    from components.registry.store import PromotionBusy

    from mlflow.exceptions import MlflowException

    try:
        yield
    except (PromotionRefused, PromotionBusy, RegistryInconsistent, LookupError) as exc:
        typer.secho(f"{verb}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    except MlflowException as exc:  # the store itself failed: one line, and where to look
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        typer.secho(f"{verb}: the registry failed: {first}; `copyflow status` shows the aliases as they are now",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


@app.command()
def retrain(
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="re-run every stage even if DVC finds it unchanged")] = False,
) -> None:
    """Run the retrain flow (Prefect): source -> ingest -> validate -> clean -> features -> train -> gate -> register."""
    from components.run_summary import format_summary
    from components.tracking import StoreUnreachable, require_server, tracking_uri
    from flows.retrain import DataGateFailed, ParamsNotTracked, RetrainBusy, one_retrain_at_a_time, tracked_params
    from flows.retrain import retrain as retrain_flow

    from components.dvc_runner import StageFailed
    from components.evaluation.frozen import SnapshotError
    from components.evaluation.gates import GateFailed, GateInputError
    from components.registry.status import render_status, status

    cfg = _config(params, profile)
    try:
        tracked_params(params)  # before Prefect starts: raised in the flow, it came with Prefect's traceback
    except ParamsNotTracked as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    try:
        with one_retrain_at_a_time(cfg):
            pass  # another retrain or a prune holds the lock: one line now, not after Prefect's 30-line traceback
    except RetrainBusy as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    _require_prefect_server()
    try:
        require_server(cfg)  # a stopped MLflow server: one line now, not minutes of retries mid-flow
    except StoreUnreachable as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    try:
        result = retrain_flow(profile=profile, params_path=str(params), force=force)
    except (DataGateFailed, GateFailed, GateInputError, SnapshotError, StageFailed, ParamsNotTracked, RetrainBusy) as exc:
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
    no_reference: Annotated[bool, typer.Option("--no-reference", help="skip drift checks against the last accepted batch")] = False,
) -> None:
    """Validate a data batch with the Great Expectations suites; exit 1 if it fails."""
    from components.validation.gate import validate_dir

    cfg = _config(params, profile)
    if not data_dir.is_dir():
        typer.secho(f"error: {data_dir} is not a directory", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    report = validate_dir(data_dir, cfg, drift_skipped="not checked (--no-reference)" if no_reference else "")
    typer.echo(report.to_text())
    raise typer.Exit(0 if report.success else 1)


@app.command("accept-batch")
def accept_batch(
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """After reading a drift failure and judging the change real: make the profile's ingested batch
    the drift reference, so the next retrain compares with it. Every other check must pass."""
    from components.registry.promotion import default_actor
    from components.validation.gate import BatchNotAcceptable
    from components.validation.gate import accept_batch as do_accept

    cfg = _config(params, profile)
    try:
        accepted = do_accept(cfg, actor=default_actor())
    except (BatchNotAcceptable, FileNotFoundError) as exc:
        if isinstance(exc, BatchNotAcceptable):
            typer.echo(exc.report.to_text())
        typer.secho(f"error: {exc}; the drift reference is unchanged", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"the ingested batch of profile {profile!r} is now the drift reference ({accepted['reference']}; "
               f"{accepted['evaluated_expectations']} checks passed, drift not checked; it replaces the reference accepted at "
               f"{accepted['replaced_reference_of']}). Run `copyflow retrain --profile {profile}` again.")


@app.command("rotate-key")
def rotate_key(
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start over with a new pseudonym key on purpose (a leaked or lost key): the key in
    $COPYFLOW_PSEUDONYM_KEY, or the key file (a new one if there is none), becomes the profile's
    key of record. Every shopper gets a new id at the next retrain."""
    from components.data.privacy import PseudonymKeyError
    from components.data.privacy import rotate_key as do_rotate

    cfg = _config(params, profile)
    try:
        rotated = do_rotate(cfg)
    except PseudonymKeyError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    if not rotated["changed"]:
        typer.echo(f"key {rotated['key_id']} is already the pseudonym key of profile {profile!r}; nothing changed")
        return
    was = f"was {rotated['previous']}" if rotated["previous"] else "no key was recorded before"
    typer.echo(f"profile {profile!r} now pseudonymizes with key {rotated['key_id']} ({was}). The next "
               f"`copyflow retrain --profile {profile}` gives every shopper a new id and re-freezes the preference evaluation "
               "set. Until its release is promoted, the served preference model knows no shopper (cold start for all); "
               "restart `copyflow serve` with the new key after that retrain.")
    from components.data.erasure import forgotten_records

    stale = [r for r in forgotten_records(cfg) if r["key_id"] != rotated["key_id"]]
    if stale:  # recorded by pseudonym only: under the new key those shoppers get ids no record names
        typer.echo(f"{len(stale)} shopper(s) erased with `copyflow forget` were recorded under another key and will not be "
                   f"recognized under the new one: run `copyflow forget --profile {profile}` again for any the shop's "
                   "export still lists.")


@app.command()
def forget(
    users: Annotated[Optional[list[str]], typer.Option("--user", help="the shop's raw shopper id (repeat for several)")] = None,
    users_file: Annotated[Optional[Path], typer.Option("--users-file", help="a file of raw shopper ids, one a line")] = None,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Erase shoppers (the shop's raw ids): out of the copy server's feedback log now (safe while
    servers run), and out of every later batch, even one whose export still lists them. Says
    what still holds them: the shop's export (not edited), the current models until the next release."""
    from components.data.erasure import ErasureRecordError, ForgetError, forget_shoppers, report_lines
    from components.data.privacy import PseudonymKeyError

    cfg = _config(params, profile)
    try:
        raw_ids = list(users or []) + (_ids_in(users_file) if users_file else [])
        report = forget_shoppers(cfg, raw_ids)
    except (ErasureRecordError, ForgetError, PseudonymKeyError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    for line in report_lines(report):
        typer.echo(line)


def _ids_in(path: Path) -> list[str]:
    """One raw id a line; empty lines are skipped (an id padded with spaces is refused later). A
    byte order mark at the start (a list saved from a spreadsheet or Notepad) is not part of the first id."""
    from components.data.erasure import ForgetError

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ForgetError(f"cannot read --users-file {path}: {exc}") from exc
    ids = [line.removesuffix("\r") for line in text.split("\n") if line.removesuffix("\r")]
    if not ids:
        raise ForgetError(f"--users-file {path} lists no shopper id")
    return ids


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="pseudonym_key | source | ingest | validate | clean | features | train_*")],
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
    from components.data.obd import ObdFetchError
    from components.data.obd import fetch_obd as fetch

    cfg = _config(params, profile)
    try:
        path = fetch(cfg.paths.obd_dir, cfg.obd.version)
    except ObdFetchError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Open Bandit Dataset sample ready in {path}. Next: copyflow retrain --profile obd")


@app.command()
def explain(
    user: UserOpt,
    product: ProductOpt,
    top: Annotated[int, typer.Option(min=1, help="how many features to show")] = 10,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Why the preference model scores this shopper-product pair as it does (top features)."""
    from components.models.preference.explain import explain_pair
    from components.serving.copywriter import ShopperData, UnknownEntity
    from components.serving.models import NoModel, resolve_model

    from mlflow.exceptions import MlflowException
    from components.tracking import StoreUnreachable

    cfg = _config(params, profile)
    try:
        model = resolve_model(cfg, "preference")
        shoppers = ShopperData.load(cfg)
        user_id = shoppers.resolve_user_id(user)
        shoppers.product_attributes(product)  # a product not in the catalog has no features to explain
        explained = explain_pair(model.ref, user_id, product, cfg)
    except (NoModel, UnknownEntity, FileNotFoundError, KeyError, ValueError, MlflowException, StoreUnreachable) as exc:  # a deleted version: one line
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    scorer = {"fallback": "the cold-start fallback (too few events for the model)"}.get(explained.source, f"the {explained.source} model")
    typer.echo(f"preference model: {model.origin}\nuser {user_id}, product {product}")
    typer.echo(f"P(click) {explained.score:.4f}, scored by {scorer}")
    typer.echo(f"{'feature':<34} {'contribution (logit)':>20}")
    for name, value in explained.contributions[:top]:
        typer.echo(f"{name:<34} {value:>+20.4f}")


@app.command()
def generate(
    user: UserOpt,
    product: ProductOpt,
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_COPIES_PER_REQUEST, help="how many copies (greedy decoding writes one)")] = 3,
    decoding: Annotated[Optional[str], typer.Option(help="greedy | beam | top_p (default: params.yaml)")] = None,
    tone: ToneOpt = "any",
    length: LengthOpt = "any",
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Personalized copies for one shopper and product, from the champion release's generator,
    each with the release's preference model's P(click) for this shopper (what `copyflow serve`
    chooses by)."""
    from components.models.generator.api import BatchReport, GenerationInputError
    from components.models.generator.model import BrokenModel
    from components.serving.copywriter import ShopperData, UnknownEntity, load_served_generator, personalized_copies, withheld_summary
    from components.serving.models import NoModel, resolve_model

    from mlflow.exceptions import MlflowException
    from components.tracking import StoreUnreachable

    cfg = _config(params, profile)
    try:
        model = resolve_model(cfg, "generator")
        generator = load_served_generator(cfg, model.ref)  # the maintained ad-law list too, as the server
        shoppers = ShopperData.load(cfg, with_features=True)
        result = personalized_copies(shoppers, generator, user, product, n=n, decoding=decoding, tone=tone, length=length)
    except (NoModel, UnknownEntity, GenerationInputError, FileNotFoundError, BrokenModel, MlflowException, StoreUnreachable) as exc:  # a deleted version: one line
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"generator: {model.origin}")
    typer.echo(f"product {product}: " + "*".join(f"{k}#{v}" for k, vs in result.attributes.items() for v in vs))
    typer.echo(f"shopper {result.user_id} favours (lift vs all shoppers): {result.affinities}")
    typer.echo(f"focus: {', '.join(result.focus) or '(none: no value stands out for this shopper)'}")
    if result.withheld:  # never shown, as the server never serves them
        typer.secho(f"withheld {len(result.withheld)} {'copy' if len(result.withheld) == 1 else 'copies'} that broke a hard rule "
                    f"({withheld_summary(result.withheld)})", fg=typer.colors.YELLOW, err=True)
    if not result.copies:
        typer.secho("error: no copy of this product may be served (the copy server answers 503 here)", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    scores, scored_by = _copy_scores(cfg, shoppers, result)
    for i, text in enumerate(result.copies, 1):
        typer.echo(f"{i}. [P(click) {scores[i - 1]:.4f}] {text}" if scores is not None else f"{i}. {text}")
    typer.echo(scored_by)
    if len(result.copies) + len(result.withheld) < n:
        typer.secho(f"note: {len(result.copies)} distinct {'copy' if len(result.copies) == 1 else 'copies'} of the {n} asked: "
                    "this decoding finds no more (greedy writes one; use top_p or beam for several)", fg=typer.colors.YELLOW, err=True)
    report = BatchReport(len(result.copies))
    report.count(generator.unfamiliar(result.attributes))
    for warning in report.warnings():
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


def _copy_scores(cfg, shoppers, result) -> tuple[list[float] | None, str]:
    """The preference model's P(click) of each copy for this shopper, as the copy server
    scores its candidates, and a line saying by which model (or why none)."""
    from components.models.preference.api import load_preference
    from components.serving.choice import preference_scores
    from components.serving.models import resolve_model

    try:
        model = resolve_model(cfg, "preference")
        scores = preference_scores(load_preference(model.ref), cfg, shoppers, result.user_id, result.product_id, result.copies)
    except Exception as exc:  # noqa: BLE001 - the copies stand without scores
        return None, f"no P(click): the preference model cannot score them ({type(exc).__name__}: {str(exc)[:200]})"
    if scores is None:
        return None, "no P(click): the features have no impression of this shopper (the server draws uniformly)"
    return [float(x) for x in scores], f"P(click): preference model {model.origin}, as `copyflow serve` chooses"


@app.command("generate-batch")
def generate_batch(
    input: Annotated[Path, typer.Option("--input", help='JSONL of {"content": "key#value*..."} rows')],
    output: Annotated[Path, typer.Option("--output", help='JSONL of {"content", "copy"} rows')],
    focus: Annotated[Optional[str], typer.Option(help="comma-separated values to foreground")] = None,
    decoding: Annotated[Optional[str], typer.Option(help="greedy | beam | top_p (default: params.yaml)")] = None,
    model: Annotated[Optional[str], typer.Option(help="model dir or MLflow URI (default: the champion)")] = None,
    backend: Annotated[str, typer.Option(help="torch (fastest for batches on CPU) | onnx")] = "torch",
    resume: Annotated[bool, typer.Option("--resume", help="carry on from OUTPUT.partial, left by a job that stopped")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing OUTPUT (and, without --resume, a stopped job's OUTPUT.partial)")] = False,
    tone: ToneOpt = "any",
    length: LengthOpt = "any",
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write one copy per input row with the champion generator (or --model). Rows go to
    OUTPUT.partial as they are done; OUTPUT appears when all are."""
    import time

    from components.evaluation.copy_rules import gate_ad_law_words
    from components.models.generator.api import GenerationInputError, check_resume_overwrite, partial_path
    from components.models.generator.api import generate_batch as run_batch
    from components.models.generator.model import BrokenModel
    from components.serving.models import NoModel, resolve_model

    try:  # a usage error: before the params, the store and the model are looked at
        check_resume_overwrite(output, resume, overwrite)
    except GenerationInputError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    cfg = _config(params, profile)
    started, first = time.monotonic(), []

    def progress(done: int, total: int) -> None:
        if not first:
            first.append(done)  # rows a resumed job found written: not this run's speed
            return
        rate = (done - first[0]) / max(time.monotonic() - started, 1e-9)
        left = (total - done) / rate if rate else float("inf")
        typer.echo(f"{done}/{total} copies ({rate:.1f}/s, about {left / 60:.0f} min left)", err=True)

    if backend not in ("torch", "onnx"):
        typer.secho(f"error: unknown backend {backend!r}; expected torch or onnx", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    from mlflow.exceptions import MlflowException
    from components.tracking import StoreUnreachable

    try:
        if model and model.startswith(("runs:/", "models:/")):  # look it up in this project's store,
            from components.tracking import configure, require_store

            require_store(cfg)  # which must exist: `configure` would create an empty one
            configure(cfg)
        ref, origin = (model, model) if model else (lambda m: (m.ref, m.origin))(resolve_model(cfg, "generator"))
        report = run_batch(input, output, ref, focus=[f.strip() for f in focus.split(",")] if focus else None,
                           decoding=decoding, backend=backend, resume=resume, progress=progress, tone=tone, length=length,
                           overwrite=overwrite, extra_ad_law_words=gate_ad_law_words(cfg))
    except (NoModel, GenerationInputError, FileNotFoundError, BrokenModel, MlflowException, StoreUnreachable) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    except BaseException as exc:  # stopped part-way (Ctrl-C, out of memory, a full disk): say where the work is
        if first and partial_path(output).exists():
            typer.secho(f"stopped; the copies written so far are in {partial_path(output)}: run again with --resume (same model and options) to carry on", fg=typer.colors.YELLOW, err=True)
        if isinstance(exc, (OSError, MemoryError)):  # the machine's limit, not a bug: one line, not a traceback chain
            typer.secho(f"error: {type(exc).__name__}: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from exc
        raise
    typer.echo(f"wrote {report.written} {'copy' if report.written == 1 else 'copies'} to {output} (generator: {origin})")
    for warning in report.warnings():
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


@app.command()
def promote(
    release: Annotated[Optional[int], typer.Option(help="copyflow-release version (default: the challenger)")] = None,
    note: Annotated[Optional[str], typer.Option(help="why; recorded on the release")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would move, move nothing")] = False,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Make a release champion (all its models together) after re-checking its gate evidence."""
    from components.registry.status import render_status, status
    from components.registry import promote as do_promote

    cfg = _registry_config(params, profile)
    with _registry_errors("promotion refused"):
        result = do_promote(cfg, release=release, dry_run=dry_run, note=note)
    for line in result.get("notes", []):
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    if result.get("recheck_report"):
        typer.echo(result["recheck_report"])
    if result.get("message"):
        typer.echo(result["message"])
    else:
        verb = "would promote" if dry_run else "promoted"
        typer.echo(f"{verb} release {result['release']} (champion before: {result['replaces']})")
    typer.echo(render_status(status(cfg)))


@app.command()
def rollback(
    note: Annotated[Optional[str], typer.Option(help="why; recorded on the release")] = None,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Put the previous champion release back in one step."""
    from components.registry.status import render_status, status
    from components.registry import rollback as do_rollback

    cfg = _registry_config(params, profile)
    with _registry_errors("rollback refused"):
        result = do_rollback(cfg, note=note)
    for line in result.get("notes", []):
        typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"rolled back release {result['rolled_back']}; champion is release {result['release']} again")
    typer.echo(render_status(status(cfg)))


@app.command()
def prune(
    keep_releases: Annotated[Optional[int], typer.Option("--keep-releases", min=1,
                             help="newest releases (and rollback steps) kept (default: registry.keep_releases)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go, change nothing")] = False,
    dvc_cache: Annotated[bool, typer.Option("--dvc-cache", help="also `dvc gc --workspace`: drop the data versions "
                                            "only earlier retrains produced (the project's, every profile's)")] = False,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Remove old releases, the model versions and runs only they kept, and their files (mlflow gc).
    Aliased releases, the newest ones and the rollback history stay (docs/registry.md, "Retention")."""
    from components.dvc_runner import StageFailed
    from components.registry.retention import collect_dvc_cache, render_dvc_gc, render_prune, store_profiles
    from components.registry.retention import prune as do_prune
    from components.retrain_lock import RetrainBusy

    cfg = _registry_config(params, profile)
    try:
        with _registry_errors("prune"):
            result = do_prune(cfg, keep_releases=keep_releases, dry_run=dry_run, sharing=store_profiles(params, cfg))
    except RetrainBusy as exc:
        typer.secho(f"prune refused: {exc}; nothing was removed", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(render_prune(result))
    if not dvc_cache:
        return
    try:  # every profile's lock this time: the DVC cache is the whole project's
        typer.echo(render_dvc_gc(collect_dvc_cache(params, dry_run=dry_run)))
    except (RetrainBusy, StageFailed) as exc:
        typer.secho(f"DVC cache not collected: {exc}; the MLflow part above is done", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


@app.command("status")
def status_command(profile: ProfileOpt = "quick", params: ParamsOpt = Path("params.yaml")) -> None:
    """Champion / challenger / previous release and models, with their key metrics."""
    from components.registry.status import render_status, status

    typer.echo(render_status(status(_registry_config(params, profile))))


@app.command()
def compare(
    release: Annotated[Optional[int], typer.Option(help="release to compare (default: the challenger)")] = None,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Challenger vs champion on the frozen evaluation set: the gate report."""
    from components.registry import compare as do_compare

    cfg = _registry_config(params, profile)
    with _registry_errors("compare"):
        report = do_compare(cfg, release=release)
    typer.echo(report)


@app.command()
def deploy() -> None:
    """Create the local process work pool and deploy prefect.yaml (retrain nightly, promote, rollback, prune nightly)."""
    raise typer.Exit(subprocess.call(["bash", str(INFRA / "deploy.sh")]))


@app.command()
def worker() -> None:
    """Run a Prefect worker on the local process pool (executes scheduled retrains and promotions)."""
    raise typer.Exit(subprocess.call(["bash", str(INFRA / "worker.sh")]))


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5000,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Start the MLflow UI on the embedded tracking store."""
    from components.tracking import artifact_root, tracking_uri

    cfg = _config(params, profile)
    uri = tracking_uri(cfg)
    _require_free_port(host, port)
    cmd = ["mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if artifact_root(uri):
        cmd += ["--default-artifact-root", artifact_root(uri)]
    typer.echo(f"MLflow UI on http://{host}:{port}  (store: {uri}); Ctrl-C stops it")
    raise typer.Exit(_run_server_group(cmd))


def _run_server_group(module_args: list[str]) -> int:
    """Run a server (`python -m MODULE_ARGS...`) until it exits or this command is stopped, and end it
    with every process it started either way.

    It leads its own process group through components.lifecycle: a SIGTERM or SIGKILL of this
    command reaches the whole group (the kernel signals the leader when its parent dies), and
    Ctrl-C here stops the group. Before, a SIGTERM left `mlflow server` and its workers running.
    Job execution is off, as infra/up.sh has it: a UI needs none of MLflow's job workers (seven
    processes on start).
    """
    import os

    from components.lifecycle import stop_group

    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "components.lifecycle", *module_args], env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_group(proc)
        return 0
    except BaseException:
        stop_group(proc)
        raise


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="bind address (default: serving.host)")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="port (default: serving.port)")] = None,
    profile: ProfileOpt = "quick",
    params: ParamsOpt = Path("params.yaml"),
    allow_unauthenticated: Annotated[bool, typer.Option(help="bind beyond loopback without a token (behind a gateway that authenticates)")] = False,
) -> None:
    """Serve personalized copy over HTTP from the champion release, logging what was served and
    what shoppers did (POST /copy, POST /feedback, GET /health; docs/serving.md)."""
    import uvicorn

    from components.data.privacy import PseudonymKeyError, key_for_data
    from components.models.generator.model import BrokenModel
    from components.serving.app import Champion, create_app, is_loopback, serving_token
    from components.serving.choice import PREFERENCE
    from components.serving.models import NoModel

    from mlflow.exceptions import MlflowException
    from components.tracking import StoreUnreachable

    cfg = _config(params, profile)
    host, port = host or cfg.serving.host, port or cfg.serving.port
    token = serving_token(cfg)
    if token is None and not is_loopback(host) and not allow_unauthenticated:
        # /feedback writes what the next release trains on: open to a network, anyone could.
        typer.secho(f"error: refusing to serve on {host} without a token: anyone who reaches it could write the feedback log "
                    f"the next release trains on. Set {cfg.serving.token_env} (clients send Authorization: Bearer <token>), "
                    "or pass --allow-unauthenticated behind a gateway that authenticates.", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    champion = Champion(cfg, "generator")
    try:
        loaded = champion.current()  # load before listening: a missing model is one line, not a 503 later
        key_for_data(cfg)  # a key other than the data's would make every shopper unknown
    except (NoModel, BrokenModel, FileNotFoundError, MlflowException, PseudonymKeyError, StoreUnreachable) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    scorer, choosing = None, "a uniform draw among the candidates"
    if cfg.serving.choice == PREFERENCE:  # loaded before listening too, so the first line says which
        scorer = Champion(cfg, "preference")
        try:
            choosing = f"the preference model of {scorer.current().origin}, exploration {cfg.serving.exploration}"
        except Exception as exc:  # noqa: BLE001 - copy can still be served: uniformly, until a preference model loads
            choosing = f"a uniform draw until a preference model loads ({type(exc).__name__}: {exc})"
    access = f"bearer token from {cfg.serving.token_env}" if token else "no token"
    typer.echo(f"copy server on http://{host}:{port} (generator: {loaded.origin}; copy chosen by {choosing}; "
               f"/copy and /feedback: {access}; feedback log: {cfg.feedback_dir()}); API docs at /docs; Ctrl-C stops it")
    uvicorn.run(create_app(cfg, champion, scorer=scorer), host=host, port=port, log_level="info")


if __name__ == "__main__":
    app()

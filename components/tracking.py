"""MLflow wiring: the embedded sqlite store under mlflow/, or any server named in params/env.

Nothing here runs at import; callers call `configure(cfg)` once per process.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GX_ANALYTICS_ENABLED": "false",
}

EMBEDDED_DIR = Path("mlflow")
TRACKING_URI_ENV = "COPYFLOW_TRACKING_URI"
CACHE_DIR_ENV = "COPYFLOW_CACHE_DIR"
CACHE_MAX_MB_ENV = "COPYFLOW_CACHE_MAX_MB"
CACHE_MAX_MB = 4096  # a release is ~20 MB of bundles: months of nightly releases, not years
CACHE_KEEP_RECENT_S = 3600  # an entry used this recently may be loading in another process: never evicted
MARKER = ".copyflow-artifact"


def disable_telemetry() -> None:
    """Turn every library's telemetry off unless the user explicitly set the variable."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def profile_uri_env(profile: str) -> str:
    """The variable that names the store of a profile that keeps one of its own (shop, obd)."""
    return f"{TRACKING_URI_ENV}_{profile.upper()}"


class StoreConflict(ValueError):
    """$COPYFLOW_TRACKING_URI would put a profile that keeps a registry of its own into the shared one."""


class StoreUnreachable(ConnectionError):
    """The tracking store is an MLflow server that does not answer."""


def tracking_uri(cfg=None) -> str:
    """params.yaml `tracking.uri`, else $COPYFLOW_TRACKING_URI, else the embedded sqlite store.

    Not $MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that variable itself, so it would
    carry one profile's (or one test's) store into the next configuration in the same process.

    A profile that names its own `paths.mlflow_dir` (obd: another shop) is never sent to the
    shared store named by the variable: its models would take the same registered names and
    aliases as the other profiles', and promoting one shop's release would replace the other's
    champion. It must name its own `tracking.uri`, or its own variable
    ($COPYFLOW_TRACKING_URI_<PROFILE>, which `make up` writes for each such profile so that one
    worker can run every profile's deployments), instead.
    """
    if cfg is not None and cfg.tracking.uri:
        return cfg.tracking.uri
    if cfg is not None and cfg.own_store and os.environ.get(profile_uri_env(cfg.profile)):
        return os.environ[profile_uri_env(cfg.profile)]
    if os.environ.get(TRACKING_URI_ENV):
        if cfg is not None and cfg.own_store:
            raise StoreConflict(
                f"profile {cfg.profile!r} keeps a tracking store and registry of its own "
                f"(paths.mlflow_dir: {cfg.paths.mlflow_dir}), but {TRACKING_URI_ENV}={os.environ[TRACKING_URI_ENV]} "
                f"would register its models next to the other profiles' under the same names. "
                f"Set profiles.{cfg.profile}.tracking.uri or {profile_uri_env(cfg.profile)} to a store of its own, "
                f"or unset {TRACKING_URI_ENV} to use {Path(cfg.paths.mlflow_dir) / 'mlflow.db'}"
            )
        return os.environ[TRACKING_URI_ENV]
    mlflow_dir = cfg.paths.mlflow_dir if cfg is not None else EMBEDDED_DIR
    return f"sqlite:///{(Path(mlflow_dir) / 'mlflow.db').resolve()}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of an sqlite store live next to the database file (mlflow/artifacts)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def require_store(cfg=None) -> None:
    """Raise FileNotFoundError when the embedded store does not exist yet. Commands that only read
    the registry or move its aliases call this first: `configure` would otherwise create an empty
    store at a mistyped path and report "no releases" instead of the real mistake. A server store
    must answer (`require_server`)."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(
            f"no MLflow tracking store at {uri.removeprefix('sqlite:///')}: run `copyflow retrain` first, "
            f"or check --params, --profile and {TRACKING_URI_ENV}"
        )
    require_server(cfg)


def require_server(cfg=None) -> None:
    """Raise StoreUnreachable when the store is an MLflow server that does not answer. MLflow
    retries every request for minutes: after `make down`, with the variables of `.run/env` still
    set, `copyflow status` spent 4 minutes before a 470-line traceback."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return  # it answered (a gateway may keep /health to itself): MLflow's own errors will say more
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreUnreachable(
            f"the MLflow server at {uri} does not answer ({reason}): start it with `make up`, or, if `make down` "
            f"stopped it, unset {TRACKING_URI_ENV} and MLFLOW_TRACKING_URI (`.run/env` set them) to use the embedded store"
        ) from exc


def configure(cfg=None) -> str:
    """Point MLflow at the configured store and select the experiment; returns its id."""
    import mlflow

    disable_telemetry()
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # the model registry lives in the same store
    # No os.environ export: training subprocesses load the same params and resolve the same
    # store themselves, and one process may serve several profiles' stores in turn.
    name = cfg.tracking.experiment if cfg is not None else "copyflow"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_root(uri))
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def artifact_cache_dir() -> Path:
    """Where downloaded model artifacts are kept: $COPYFLOW_CACHE_DIR, else ~/.cache/copyflow."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "copyflow") / "artifacts"


def download_artifacts_cached(artifact_uri: str) -> Path:
    """Local copy of an MLflow artifact, downloaded once per tracking store and URI.

    `mlflow.artifacts.download_artifacts` copies into a new temporary folder on every call and
    never removes it: every `copyflow generate` left a 14 MB bundle in /tmp. A run's artifacts
    (`runs:/<run id>/...`) and a logged model (`models:/m-<id>`) never change once written, so
    they are kept under `artifact_cache_dir()`; a registered name or alias (`models:/name@champion`)
    is first resolved to the logged model it points at now.
    """
    import hashlib
    import shutil
    import tempfile

    import mlflow

    if artifact_uri.startswith("models:/") and not artifact_uri.startswith("models:/m-"):
        model_id = mlflow.models.get_model_info(artifact_uri).model_id
        artifact_uri = f"models:/{model_id}" if model_id else artifact_uri
    key = hashlib.sha256(f"{mlflow.get_tracking_uri()}\n{artifact_uri}".encode()).hexdigest()[:24]
    root = artifact_cache_dir()
    final, marker = root / key, root / key / MARKER
    if marker.is_file():
        _touch(marker)
        return final / marker.read_text(encoding="utf-8")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(staging)))
        (staging / MARKER).write_text(local.relative_to(staging).as_posix(), encoding="utf-8")
        try:
            staging.rename(final)  # atomic: a reader never sees half a download
        except OSError:
            if not marker.is_file():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    evict_artifact_cache(keep=final)
    return final / marker.read_text(encoding="utf-8")


def _touch(marker: Path) -> None:
    try:
        os.utime(marker)  # the marker's time is the entry's last use
    except OSError:
        pass  # a read-only cache still serves


def evict_artifact_cache(keep: Path | None = None, max_mb: float | None = None, now: float | None = None) -> list[str]:
    """Remove the least recently used entries until the cache is under $COPYFLOW_CACHE_MAX_MB
    (default 4096). Every nightly release adds its bundles, and a long-running server host would
    otherwise fill its disk. Entries used within the last hour, and `keep`, stay whatever their
    size; so do staging folders of downloads in progress, unless a day old (a killed download).
    Returns the names removed."""
    import shutil
    import time

    root = artifact_cache_dir()
    limit = (max_mb if max_mb is not None else float(os.environ.get(CACHE_MAX_MB_ENV) or CACHE_MAX_MB)) * 2**20
    now = time.time() if now is None else now
    entries, removed = [], []
    for path in root.iterdir() if root.is_dir() else []:
        try:
            if path.name.startswith("."):
                if path.is_dir() and now - path.stat().st_mtime > 86400:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
                continue
            used = (path / MARKER).stat().st_mtime
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        except OSError:
            continue  # removed by another process meanwhile
        entries.append((used, size, path))
    total = sum(size for _, size, _ in entries)
    for used, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if path == keep or now - used < CACHE_KEEP_RECENT_S:
            continue
        # Renamed away first: a reader finds the entry whole or not at all, and downloads it again.
        doomed = path.with_name(f".evicted-{path.name}")
        try:
            path.rename(doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        total -= size
        removed.append(path.name)
    return removed


def flatten_numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested summary as MLflow metric names like `rows_after.events`."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, f"{name}."))
        elif isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, (int, float)) and value == value:  # drop NaN
            flat[name] = float(value)
    return {k.replace(" ", "_"): v for k, v in flat.items()}


def headline_metrics(manifests: list[dict]) -> dict[str, float]:
    """`<family>.<metric>` for each training manifest's key figures it has (finite numbers): the
    ones `copyflow status` shows and version tags carry (KEY_METRICS), copied onto the retrain run
    so two retrains compare from their parent runs alone (the training runs keep every metric)."""
    from components.registry.names import KEY_METRICS

    headline: dict[str, float] = {}
    for manifest in manifests:
        family, metrics = manifest.get("model"), manifest.get("metrics") or {}
        for name in KEY_METRICS.get(family, ()):
            value = metrics.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                headline[f"{family}.{name}"] = float(value)
    return headline


def config_params(cfg) -> dict[str, str]:
    """Every knob of the profile's resolved params.yaml as MLflow params named `section.key`
    (`seed`, `data.test_fraction`, `features.history_length`, ...), so two runs compared in the
    UI show every setting that differs, not only the training sections'. One level deep: a
    nested block (simulator.dirt, validation.drift) is one param, its value the block. Not the
    `tracking` section: where the run is logged shapes nothing, and a server URI may hold a password."""
    params: dict[str, str] = {}
    for section, value in cfg.model_dump(exclude={"own_store", "tracking"}).items():
        if isinstance(value, dict):
            params.update({f"{section}.{key}": str(inner) for key, inner in value.items()})
        else:
            params[section] = str(value)
    return params


SPLIT_CONTEXTS = {"train": "training", "valid": "validation", "test": "testing"}


def split_datasets(frames: dict, *, name: str, source: Path | str) -> list:
    """MLflow datasets of a model's splits ({"train": frame, "valid": ..., "test": ...}), named
    `<name>-<split>`: row count, schema and a content digest, never the rows themselves."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return [(mlflow.data.from_pandas(frame, source=str(source), name=f"{name}-{split}"), SPLIT_CONTEXTS.get(split, split))
                for split, frame in frames.items()]


def log_datasets(datasets: list) -> None:
    """The splits as dataset inputs of the active run (the run page's Datasets, the runs table's
    Dataset column): two runs compared in the UI show whether they used the same rows."""
    import mlflow

    mlflow.log_inputs(datasets=[d for d, _ in datasets], contexts=[c for _, c in datasets], tags_list=[None] * len(datasets))


def process_tags() -> dict[str, str]:
    """Which process owns a run: lets a later run tell a crashed run from a live one."""
    import socket

    return {"copyflow.host": socket.gethostname(), "copyflow.pid": str(os.getpid())}


def end_orphaned_runs(experiment_id: str, kind: str, profile: str) -> list[str]:
    """Mark FAILED the RUNNING `kind` runs of this profile whose process, on this host, is gone
    (a SIGKILLed or OOM-killed flow never ends its runs), and their RUNNING nested runs.
    Returns the ids it ended. Runs of other hosts are left alone: their processes cannot be seen."""
    from mlflow import MlflowClient

    client = MlflowClient()
    host = process_tags()["copyflow.host"]
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.kind = '{kind}' and tags.profile = '{profile}'",
        max_results=200,
    )
    ended: list[str] = []
    for run in running:
        tags = run.data.tags
        pid = tags.get("copyflow.pid", "")
        if tags.get("copyflow.host") != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        children = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{run.info.run_id}'",
            max_results=200,
        )
        for orphan in [*children, run]:
            client.set_tag(orphan.info.run_id, "copyflow.orphaned", f"its process (pid {pid} on {host}) ended without ending the run")
            client.set_terminated(orphan.info.run_id, status="FAILED")
            ended.append(orphan.info.run_id)
    return ended


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def git_commit(cwd: Path | str = ".") -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            # dvc.lock changes with every run that recomputes data: it is lineage, not code.
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"],
            cwd=cwd,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log_stage(
    parent_run_id: str,
    stage: str,
    summary: dict,
    *,
    lock: dict | None = None,
    skipped: bool = False,
    artifacts: list[Path] | None = None,
    tags: dict[str, str] | None = None,
    status: str = "FINISHED",
) -> str:
    """One nested MLflow run per pipeline stage: params, counts, data hashes, reports."""
    import mlflow

    with mlflow.start_run(
        run_name=stage, nested=True, parent_run_id=parent_run_id, tags={"stage": stage, **(tags or {})}
    ) as run:
        mlflow.set_tag("dvc.skipped", str(skipped).lower())
        for kind, hashes in (lock or {}).items():
            for path, md5 in hashes.items():
                mlflow.set_tag(f"dvc.{kind}.{path}"[:250], md5)
        metrics = flatten_numbers(summary)
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(summary, "summary.json")
        for path in artifacts or []:
            if Path(path).exists():
                mlflow.log_artifact(str(path))
        run_id = run.info.run_id
    if status != "FINISHED":
        mlflow.tracking.MlflowClient().set_terminated(run_id, status=status)
    return run_id

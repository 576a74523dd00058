"""The pipeline's stages, runnable one at a time: `python -m components.pipeline STAGE --profile P`.

dvc.yaml calls exactly this entry point, and the Prefect retrain flow runs the stages through
`dvc repro`, so the orchestrated run, a manual `dvc repro` and a test all execute the same code.
Data flows one way: (pseudonym_key) source -> ingest -> validate -> clean -> features -> train_*.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from components.config import Config, config_error_text, load_config

# stage -> "module:function"; each function takes a Config and returns its summary dict.
STAGE_FUNCTIONS: dict[str, str] = {
    "pseudonym_key": "components.data.privacy:run_key_check",
    "source": "components.data.source:run_source",
    "ingest": "components.data.ingest:run_ingest",
    "validate": "components.validation.gate:run_validate",
    "clean": "components.data.cleaning:run_clean",
    "features": "components.features.build:run_features",
}
# stage -> training entry module launched as its own process (DDP-safe, see training/launcher.py)
TRAINING_STAGES: dict[str, str] = {
    "train_preference": "components.training.preference",
    "train_generator": "components.training.generator",
}
STAGES: tuple[str, ...] = (*STAGE_FUNCTIONS, *TRAINING_STAGES)
DATA_STAGES: tuple[str, ...] = tuple(STAGE_FUNCTIONS)
# Run on every repro (dvc.yaml `always_changed`): what they check lives outside the repository.
ALWAYS_RUN_STAGES: tuple[str, ...] = ("pseudonym_key",)

# The retrain flow sets this so training runs nest under its MLflow parent run; DVC does not
# hash the environment, so a cached stage stays cached whoever launches it.
PARENT_RUN_ENV = "COPYFLOW_PARENT_RUN_ID"


def stages_for(cfg: Config) -> list[str]:
    """The stages a profile runs: the generator needs copy text, which OBD logs do not have."""
    if cfg.data.source == "obd":
        return [s for s in STAGES if s != "train_generator"]
    return list(STAGES)


def stage_output_dir(cfg: Config, stage: str) -> Path:
    if stage in TRAINING_STAGES:
        return cfg.stage_dir("models") / stage.removeprefix("train_")
    return cfg.stage_dir({"source": "source", "ingest": "ingested", "validate": "validation"}.get(stage, stage))


def run_stage(stage: str, cfg: Config, params_path: Path = Path("params.yaml")) -> dict:
    """Run one stage in this process (training stages in a child process) and return its summary."""
    if stage in STAGE_FUNCTIONS:
        if stage == "clean":  # the first stage past the data gate runs only on what it accepted
            from components.validation.gate import require_accepted_batch

            require_accepted_batch(cfg)
        module_name, function_name = STAGE_FUNCTIONS[stage].split(":")
        function = getattr(importlib.import_module(module_name), function_name)
        return function(cfg)
    if stage in TRAINING_STAGES:
        from components.training.launcher import launch

        return launch(
            TRAINING_STAGES[stage],
            profile=cfg.profile,
            out_dir=stage_output_dir(cfg, stage),
            params_path=params_path,
            parent_run_id=os.environ.get(PARENT_RUN_ENV) or None,
        )
    raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def read_summary(cfg: Config, stage: str) -> dict:
    """The summary a stage left on disk (also when DVC skipped it because nothing changed)."""
    directory = stage_output_dir(cfg, stage)
    path = directory / ("manifest.json" if stage in TRAINING_STAGES else "summary.json")
    if not path.exists():
        raise FileNotFoundError(f"stage {stage!r} has no summary at {path}; has it run?")
    return json.loads(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.pipeline", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    from components.tracking import disable_telemetry

    disable_telemetry()
    try:
        cfg = load_config(args.params, args.profile)
    except (FileNotFoundError, ValueError) as exc:  # one line in the DVC log, naming the key, not a traceback
        print(f"copyflow stage {args.stage!r}: {config_error_text(exc, args.params, args.profile)}", file=sys.stderr)
        return 2
    try:
        summary = run_stage(args.stage, cfg, args.params)
    except Exception as exc:  # the message is what a person reads in the DVC/Prefect log
        print(f"copyflow stage {args.stage!r} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    from components.lifecycle import die_with_parent

    die_with_parent()  # run by DVC: end with it (and so end the trainer this stage launched)
    raise SystemExit(main())

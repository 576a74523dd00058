"""Typed configuration: params.yaml (base + one profile's overrides) -> a validated `Config`.

Every knob of the platform lives in params.yaml; code receives a `Config` and never reads YAML
itself. Unknown keys are errors, so a typo in params.yaml fails loudly instead of being ignored;
so is a value of another type (no `true` read as 1). Each load validates the base and every
profile, so a mistake in a profile not run today fails now, not in the run that uses it.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

DEFAULT_PARAMS = Path("params.yaml")
DEFAULT_PROFILE = "quick"


# Strict: YAML already gives real ints, floats and booleans, so a value of another type is a
# mistake to name, not to convert (lax pydantic read `max_epochs: true` as 1, "10" and 10.0 as
# 10 and `auto_promote: 1` as true). An int is still a valid float. Paths are the one exception:
# load_config hands them over as strings.
ProjectPath = Annotated[Path, Field(strict=False)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PathsConfig(Section):
    corpus: ProjectPath
    obd_dir: ProjectPath
    source_folder: ProjectPath  # data.source folder: a shop's exports in the raw-layer format
    feedback_folder: ProjectPath  # the copy server's log of served copies and outcomes: <folder>/<profile>/
    artifacts: ProjectPath
    state: ProjectPath
    pseudonym_key_file: ProjectPath
    ad_law_words: ProjectPath
    latin_words: ProjectPath
    mlflow_dir: ProjectPath


class TrackingConfig(Section):
    uri: str | None = None
    experiment: str = "copyflow"


class DataConfig(Section):
    source: Literal["simulated", "obd", "folder"] = "simulated"
    n_products: int = Field(gt=0)
    valid_fraction: float = Field(ge=0, lt=0.5)
    test_fraction: float = Field(ge=0, lt=0.5)


class DirtConfig(Section):
    bot_users: int = Field(ge=0)
    bot_impressions: int = Field(ge=0)
    duplicate_event_rate: float = Field(ge=0, le=0.2)
    missing_value_rate: float = Field(ge=0, le=0.2)
    bad_price_rate: float = Field(ge=0, le=0.2)


class SimulatorConfig(Section):
    n_users: int = Field(gt=0)
    days: int = Field(gt=1)
    start_date: IsoDateTime
    sessions_per_user_per_day: float = Field(gt=0)
    impressions_per_session: int = Field(gt=0)
    dirichlet_alpha: float = Field(gt=0)
    affinity_weight: float
    copy_mention_weight: float
    position_decay: float
    base_logit: float
    purchase_base_logit: float
    price_sensitivity_mean: float
    variants_per_product: int = Field(ge=1)
    dirt: DirtConfig


class ObdConfig(Section):
    version: str = "0.4.1"
    behavior_policy: Literal["random", "bts"] = "random"
    campaign: Literal["all", "men", "women"] = "all"


class PrivacyConfig(Section):
    key_env: str
    quasi_identifiers: list[str]
    k_anonymity_min: int = Field(ge=1)


class CleaningConfig(Section):
    price_min: float = Field(ge=0)
    price_max: float
    bot_z: float = Field(default=4.0, gt=0)  # robust z a signal must reach to count as evidence
    bot_min_signals: int = Field(default=2, ge=1, le=3)  # of volume, pace and click rate
    bot_min_impressions: int = Field(ge=0)
    bot_reference_min_impressions: int = Field(default=20, ge=1)  # the yardstick: users with at least this many
    bot_min_reference_users: int = Field(default=30, ge=3)  # fewer such users: no yardstick, nobody flagged
    bot_session_gap_minutes: float = Field(default=30.0, gt=0)  # pace counts gaps up to this (a longer one is a new visit)
    bot_require_pace: bool = True  # one signal must be pace (volume + click rate is also a best customer)
    bot_filter: bool = True

    @model_validator(mode="before")
    @classmethod
    def _no_bot_share(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bot_contamination" in data:
            raise ValueError(
                "cleaning.bot_contamination is gone: bots are no longer a fixed share of shoppers (it removed a shop's "
                "heaviest real customers, or missed bots beyond the share). Delete it; bot_z and bot_min_signals set "
                "the evidence a user must show (docs/schema.md, 'Bots')"
            )
        return data

    @model_validator(mode="after")
    def _price_range(self) -> CleaningConfig:
        if self.price_min >= self.price_max:
            raise ValueError(f"price_min ({self.price_min}) must be below price_max ({self.price_max})")
        return self


class DriftConfig(Section):
    row_count_ratio_min: float = Field(gt=0)
    row_count_ratio_max: float = Field(gt=0)
    mean_tolerance: float = Field(gt=0)
    kl_threshold: float = Field(gt=0)

    @model_validator(mode="after")
    def _row_count_range(self) -> DriftConfig:
        if self.row_count_ratio_min > self.row_count_ratio_max:
            raise ValueError(f"row_count_ratio_min ({self.row_count_ratio_min}) exceeds row_count_ratio_max ({self.row_count_ratio_max})")
        return self


def _iso_datetime(value: str) -> str:
    """A date or date-time pydantic cannot leave as free text: it is parsed where it is used."""
    try:
        dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 date or date-time (e.g. 2026-01-05 or 2026-01-05T00:00:00+00:00)") from exc
    return value


IsoDateTime = Annotated[str, AfterValidator(_iso_datetime)]


class ValidationConfig(Section):
    suites_dir: ProjectPath = Path("expectations")
    min_timestamp: IsoDateTime = "2000-01-01T00:00:00+00:00"
    mostly_unique_events: float = Field(gt=0, le=1)
    mostly_not_null: float = Field(gt=0, le=1)
    mostly_price_in_range: float = Field(gt=0, le=1)
    mostly_price_present: float = Field(default=0.97, ge=0, le=1)
    min_copies: int = Field(default=1, ge=0)
    max_timestamp_skew_hours: float = Field(ge=0)
    mostly_after_impression: float = Field(default=0.99, gt=0, le=1)
    mostly_outcome_with_impression: float = Field(default=0.97, gt=0, le=1)
    max_event_value: float = Field(default=1_000_000.0, gt=0)
    drift: DriftConfig


class FeaturesConfig(Section):
    history_length: int = Field(gt=0)
    min_events_returning: int = Field(ge=0)
    label_window_days: int = Field(ge=0)
    link_max_hours: float = Field(default=24.0, gt=0)  # an outcome answers an impression at most this much earlier
    valid_days: int = Field(ge=1)
    test_days: int = Field(ge=1)
    ctr_prior_strength: float = Field(gt=0)
    affinity_prior_strength: float = Field(gt=0)


# What lightning.Trainer accepts (checked here so a typo fails at load, not after the data stages).
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = (
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
    "32-true", "64-true", "64", "32", "16", "bf16",
)


# Lightning's registered strategy names (a test checks them against its registry) and "auto".
STRATEGIES = (
    "auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false",
    "ddp_fork_find_unused_parameters_true", "ddp_fork_find_unused_parameters_false", "fsdp", "fsdp_cpu_offload",
    "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3",
    "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme", "single_device", "xla", "single_xla",
)
# Strategies whose ranks run in child processes that Lightning starts with multiprocessing (spawn or
# fork) and that hand back to the calling process only the best checkpoint's path, the last weights
# and the metrics: not the best score, the epoch and step counts or the callbacks' state, all of
# which training reads after `fit`. Refused at load; `ddp` (each rank re-runs the training entry
# point, which copyflow launches as its own process) is the multi-process strategy.
MULTIPROCESSING_STRATEGIES = (
    "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false",
    "ddp_fork_find_unused_parameters_true", "ddp_fork_find_unused_parameters_false", "xla",
)


class TrainerConfig(Section):
    """Passed straight to `lightning.Trainer`: scale out by editing params.yaml only."""

    accelerator: Literal[ACCELERATORS] = "cpu"
    devices: int | Literal["auto"] | list[int] = 1  # a count (-1: all), "auto", or device ids
    strategy: Literal[STRATEGIES] = "auto"  # a typo fails at load, not after the data stages
    precision: Literal[PRECISIONS] = "32-true"
    num_nodes: int = Field(default=1, ge=1)
    num_workers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _devices(self) -> TrainerConfig:
        if self.strategy in MULTIPROCESSING_STRATEGIES:
            raise ValueError(
                f"trainer.strategy {self.strategy!r} is not supported: its ranks run in processes Lightning spawns or forks, "
                "which return only the best checkpoint's path to the trainer (not its score, the epochs run or the "
                "callbacks' state), so every run would read as diverged. Use 'ddp' for several devices "
                "(copyflow already runs training as its own process, which DDP re-launches per rank)."
            )
        if isinstance(self.devices, int) and self.devices < -1 or self.devices == 0:
            raise ValueError(f"trainer.devices must be a positive count, -1 (all), 'auto' or a list of ids; got {self.devices!r}")
        if isinstance(self.devices, list) and (not self.devices or min(self.devices) < 0):
            raise ValueError(f"trainer.devices: a list of device ids must be non-empty and non-negative; got {self.devices!r}")
        return self


class PreferenceConfig(Section):
    models: list[Literal["logreg", "deep"]] = Field(min_length=1)
    batch_size: int = Field(gt=0)
    max_epochs: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    patience: int = Field(ge=0)
    embedding_dim: int = Field(gt=0)
    cross_layers: int = Field(ge=0)
    hidden: list[Annotated[int, Field(gt=0)]]
    dropout: float = Field(ge=0, lt=1)
    cold_start_min_events: int = Field(ge=0)
    bootstrap: int = Field(ge=0)
    logreg_lr: float = Field(default=0.01, gt=0)
    id_dropout: float = Field(default=0.05, ge=0, lt=1)
    cold_holdout_users: float = Field(default=0.1, ge=0, lt=0.5)

    @model_validator(mode="after")
    def _models_once(self) -> PreferenceConfig:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"preference.models lists a model twice: {self.models}")
        return self


class GeneratorConfig(Section):
    tokenizer_vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    nhead: int = Field(gt=0)
    encoder_layers: int = Field(gt=0)
    decoder_layers: int = Field(gt=0)
    dim_feedforward: int = Field(gt=0)
    embed_dim: int = Field(default=64, ge=0)
    dropout: float = Field(ge=0, lt=1)
    max_source_len: int = Field(gt=0)
    max_target_len: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    max_epochs: int = Field(gt=0)
    max_minutes: float = Field(gt=0)
    max_cpu_minutes: float = Field(default=0.0, ge=0)
    lr: float = Field(gt=0)
    patience: int = Field(ge=0)
    decoding: Literal["greedy", "beam", "top_p"]
    beam_size: int = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    temperature: float = Field(gt=0)
    length_penalty: float
    no_repeat_ngram: int = Field(ge=0)
    num_candidates: int = Field(default=8, gt=0)
    rerank_coverage: float = Field(default=1.0, ge=0)
    min_len: int = Field(default=0, ge=0)
    max_decode_len: int = Field(default=110, gt=0)
    length_budget: float = Field(default=1.0, ge=0)
    catalog_penalty: float = Field(default=0.0, ge=0)  # x log(1 + uses) per bigram earlier copies of the job used
    no_doubling: int = Field(default=4, ge=0)  # no run of 2..N Chinese characters repeated at once or one character later (0 = off)
    forbid_unlisted: bool = True  # no factual value the product does not list (雪纺 with no 材质); off: only contradictions are banned
    torch_threads: int = Field(default=1, ge=0)
    train_threads: int = Field(default=0, ge=0)  # threads for fit only (0 = torch_threads); decoding stays on torch_threads
    focus_samples: int = Field(default=200, gt=0)
    eval_samples: int = Field(gt=0)
    tradeoff_samples: int = Field(default=200, ge=0)
    parity_samples: int = Field(default=16, gt=0)
    max_steps: int = Field(default=-1, ge=-1)  # -1: no step cap (epochs and the clock decide)
    warmup_steps: int = Field(default=300, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    ema_decay: float = Field(default=0.0, ge=0, lt=1)  # exponential moving average of the weights (0 = off)
    focus_empty_prob: float = Field(default=0.3, ge=0, le=1)
    control_any_prob: float = Field(default=0.3, ge=0, le=1)
    max_focus: int = Field(default=3, gt=0)
    faithful_key_max_rate: float = Field(default=0.05, ge=0, le=1)
    faithful_alias_max_rate: float = Field(default=0.001, ge=0, le=1)
    faithful_alias_min_uses: int = Field(default=5, ge=1)
    max_exemplar_len: int = Field(default=100, ge=0)
    exemplar_dropout: float = Field(default=0.1, ge=0, le=1)
    exemplar_candidates: int = Field(default=3, gt=0)
    shuffle_attributes: bool = True

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GeneratorConfig:
        if self.d_model % self.nhead:
            raise ValueError(f"nhead ({self.nhead}) must divide d_model ({self.d_model})")
        if self.max_steps == 0:
            raise ValueError("generator.max_steps 0 would train nothing (-1: no step cap)")
        return self


class GatesConfig(Section):
    preference_auc_min: float = Field(ge=0, le=1)
    generator_bleu4_min: float = Field(ge=0, le=100)  # BLEU-4 x 100
    max_hallucination_rate: float = Field(ge=0, le=1)
    max_unlisted_rate: float = Field(default=0.02, ge=0, le=1)  # copies naming a factual value the product does not list
    max_ece: float = Field(ge=0, le=1)  # a gap between probabilities
    # |mean P(click) / click rate - 1|: ECE is an absolute gap, so at a 7% click rate scores at
    # half the true rate still pass max_ece; this ratio does not.
    max_calibration_ratio_error: float = Field(default=0.25, gt=0)
    max_ad_law_violations: float = Field(ge=0)
    non_inferiority_margin: float = Field(ge=0)
    generator_bleu4_margin: float = Field(ge=0)
    copy_choice_margin: float = Field(default=0.10, ge=0)  # copy-choice lift (relative click rate) vs the champion
    bootstrap_resamples: int = Field(ge=100)
    confidence_level: float = Field(gt=0.5, lt=1)
    auto_promote: bool
    lock_timeout_s: float = Field(gt=0)


class ServingConfig(Section):
    """`copyflow serve`: the HTTP copy server (components/serving/app.py). No stage reads it."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    backend: Literal["onnx", "torch"] = "onnx"
    # Copies written per request; one of the distinct ones is served and logged with its
    # propensity, so outcomes can score any copy-choosing strategy off-policy.
    candidates: int = Field(default=4, ge=1, le=16)
    # preference: the release's preference model picks the candidate this shopper is likeliest to
    # click, epsilon-greedy (components/serving/choice.py); uniform: a uniform draw.
    choice: Literal["preference", "uniform"] = "preference"
    # Share of requests served a uniformly drawn candidate instead of the best one. Above 0, so
    # every candidate keeps a chance (and a propensity) and the log can score other strategies.
    exploration: float = Field(default=0.2, gt=0, le=1)
    decoding: Literal["greedy", "beam", "top_p"] | None = None  # None: the generator's own default
    reload_seconds: float = Field(default=60, ge=0)  # how often the champion is looked up again
    threads: int = Field(default=1, ge=0)  # intra-op threads per decoding step (0: the runtime's choice)
    # The environment variable holding the bearer token /copy and /feedback require (unset or
    # empty: no token; `copyflow serve` then binds only to a loopback address).
    token_env: str = Field(default="COPYFLOW_SERVE_TOKEN", min_length=1)


class FlowConfig(Section):
    """The retrain flow itself (not tracked by DVC: no stage reads it)."""

    stage_timeout_minutes: float = Field(default=180, gt=0)  # a stage still running then is stopped, not retried


class RegistryConfig(Section):
    """Retention of the MLflow store (`copyflow prune`, components/registry/retention.py). No stage reads it."""

    # The newest release versions kept, and as many steps of the rollback history from the champion
    # (with every release holding an alias): how far back `copyflow rollback` can go after a prune.
    keep_releases: int = Field(default=10, ge=1)
    # Nothing created less than this long ago is removed (nor anything newer than the newest
    # release): a retrain in flight, or one that failed today, stays for the user to read.
    prune_min_age_days: float = Field(default=7, ge=0)


class Config(Section):
    profile: str
    # Set by load_config, not in params.yaml: the profile names a tracking store of its own
    # (paths.mlflow_dir), i.e. its models must not share a registry with the other profiles'.
    own_store: bool = False
    seed: int = Field(ge=0, le=2**32 - 1)  # what numpy and lightning.seed_everything accept (else: an error after the data stages)
    paths: PathsConfig
    tracking: TrackingConfig
    data: DataConfig
    simulator: SimulatorConfig
    obd: ObdConfig
    privacy: PrivacyConfig
    cleaning: CleaningConfig
    validation: ValidationConfig
    features: FeaturesConfig
    trainer: TrainerConfig
    preference: PreferenceConfig
    generator: GeneratorConfig
    gates: GatesConfig
    serving: ServingConfig = ServingConfig()
    flow: FlowConfig = FlowConfig()
    registry: RegistryConfig = RegistryConfig()

    def stage_dir(self, stage: str) -> Path:
        """Where a pipeline stage of this profile writes: artifacts/<profile>/<stage>/."""
        return self.paths.artifacts / self.profile / stage

    def state_dir(self) -> Path:
        return self.paths.state / self.profile

    def feedback_dir(self) -> Path:
        """Where this profile's copy server logs what it served and what shoppers did."""
        return self.paths.feedback_folder / self.profile


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (dicts merge, everything else replaces)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: key {key!r} appears twice in the same section")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `lr: 1e-3` as the text "1e-3": it wants a dot (1.0e-3). YAML 1.2, and
# DVC's parser, read a float; so does copyflow, now that a float setting refuses text.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_params(params_path: Path) -> dict[str, Any]:
    """params.yaml as a dict: a mapping at the top, no key twice."""
    with params_path.open(encoding="utf-8") as handle:
        try:
            raw = yaml.load(handle, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:  # a ValueError, so every command reports it in one line
            raise ValueError(f"{params_path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if raw is None:
        raise ValueError(f"{params_path} is empty")
    if not isinstance(raw, dict):
        raise ValueError(f"{params_path} must be a mapping of sections at the top, not a {type(raw).__name__}")
    return raw


def config_error_text(exc: Exception, params_path: Path | str, profile: str) -> str:
    """A params error as a person reads it: one line per bad setting, named by its dotted key,
    without pydantic's dump of the whole section and its documentation links."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = [line for _, _, line in _error_lines(exc)]
    return f"{params_path} (profile {profile!r}) has {_count(lines)}:\n" + "\n".join(f"  {line}" for line in lines)


def _count(lines: list) -> str:
    return f"{len(lines)} invalid setting{'s' if len(lines) != 1 else ''}"


def _error_lines(exc: Exception) -> list[tuple[tuple | None, str, str]]:
    """(pydantic location, error type, "dotted.key: what is wrong") per bad setting; (None, "",
    text) for an error that is not pydantic's (a malformed profile or paths section)."""
    from difflib import get_close_matches

    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return [(None, "", str(exc))]
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            known = get_close_matches(str(error["loc"][-1]), _known_keys(error["loc"][:-1]), n=1)
            line = f"{key}: unknown setting" + (f"; did you mean {known[0]!r}?" if known else "")
        elif error["type"] == "missing":
            line = f"{key}: required, and not set"
        elif error["type"] in _STRICT_TYPES and (hint := _strict_hint(error["type"], error.get("input"))):
            line = f"{key}: {error['msg']} (got {error['input']!r}); {hint}"
        else:
            got = repr(error.get("input"))
            shown = f" (got {got})" if not isinstance(error.get("input"), dict) and len(got) <= 80 else ""  # not a whole section
            line = f"{key}: {error['msg'].removeprefix('Value error, ')}{shown}"
        lines.append((error["loc"], error["type"], line))
    return lines


_STRICT_TYPES = ("int_type", "float_type", "bool_type")


def _strict_hint(error_type: str, value: Any) -> str | None:
    """Why a value YAML gave as another type is refused, not converted (see Section)."""
    if isinstance(value, bool):
        return "true/false is not a number here"
    if isinstance(value, float) and error_type == "int_type":
        return "a count takes a whole number, written without a decimal point"
    if isinstance(value, int) and error_type == "bool_type":
        return "write true or false"
    if isinstance(value, str) and (value.lower() in ("true", "false") if error_type == "bool_type" else _is_number(value)):
        return "in quotes it is text in YAML: write it without them"
    return None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _known_keys(section: tuple) -> list[str]:
    """The setting names the section at `section` (a pydantic error location) accepts."""
    model: Any = Config
    for part in section:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def load_config(
    params_path: Path | str = DEFAULT_PARAMS,
    profile: str = DEFAULT_PROFILE,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Load params.yaml, apply the named profile and optional overrides, and validate.

    The base and every other profile are validated too (without `overrides`): a mistake in a
    profile not run today, or in a base value only another profile uses, fails now, not in the
    scheduled run that uses it weeks later (`OtherProfilesInvalid`)."""
    params_path = Path(params_path)
    if not params_path.exists():
        raise FileNotFoundError(f"params file not found: {params_path.resolve()}")
    raw = read_params(params_path)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict) or profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; params.yaml defines {sorted(profiles) if isinstance(profiles, dict) else 'no profiles mapping'}")
    # Relative paths are relative to the project (the folder of params.yaml), not to the
    # caller's working directory, so a flow, a DVC stage and a test all see the same files.
    project_root = params_path.resolve().parent
    config = _profile_config(raw, profiles, profile, overrides, project_root)
    _check_other_profiles(raw, profiles, profile, project_root, params_path)
    return config


class OtherProfilesInvalid(ValueError):
    """The profile asked for is valid, but the base or another profile of the same file is not."""


def _profile_config(raw: dict[str, Any], profiles: dict[str, Any], profile: str | None, overrides: dict[str, Any] | None, project_root: Path) -> Config:
    """The base with `profile`'s overrides (None: the base alone) and `overrides`, validated."""
    own = profiles[profile] if profile is not None else {}
    if not isinstance(own or {}, dict):
        raise ValueError(f"profiles.{profile} must be a mapping of sections, not {own!r}")
    merged = deep_merge(raw, own or {})
    if overrides:
        merged = deep_merge(merged, overrides)
    merged["profile"] = profile or "base"
    merged["own_store"] = "mlflow_dir" in ((own or {}).get("paths") or {})
    paths = merged.get("paths") or {}
    wrong = {key: value for key, value in (paths.items() if isinstance(paths, dict) else []) if not isinstance(value, str)}
    if not isinstance(paths, dict) or wrong:
        raise ValueError(f"paths must map names to path strings; not so for {wrong or paths!r}")
    merged["paths"] = {key: str(value if Path(value).is_absolute() else project_root / value) for key, value in paths.items()}
    return Config.model_validate(merged)


def _check_other_profiles(raw: dict[str, Any], profiles: dict[str, Any], loaded: str, project_root: Path, params_path: Path) -> None:
    """Raise OtherProfilesInvalid naming each bad setting of the other profiles, and of base
    values that only they (or none) use, once, by the key to edit: `profiles.<name>.<key>` for
    a profile's own override, the plain dotted key for a base value."""
    in_profiles: dict[str, None] = {}  # ordered set of lines
    in_base: dict[str, list[str]] = {}  # line -> the profiles that use the bad base value
    for name in [*(p for p in profiles if p != loaded), None]:  # None: the base alone
        try:
            _profile_config(raw, profiles, name, None, project_root)
        except ValueError as exc:
            own = (profiles[name] or {}) if name is not None else {}
            for location, kind, line in _error_lines(exc):
                if location is None:
                    in_profiles[f"profile {name!r}: {line}" if name is not None else line] = None
                elif kind == "missing" and name is not None:
                    in_profiles[f"{line} in profile {name!r} (neither the base nor profiles.{name} sets it)"] = None
                elif name is not None and _has_key(own, location):
                    in_profiles[f"profiles.{name}.{line}"] = None
                elif name is not None:
                    in_base.setdefault(line, []).append(name)
                elif kind != "missing" and _has_key(raw, location):  # the base alone may leave a setting to the profiles
                    in_base.setdefault(line, [])
    lines = [*in_profiles]
    for line, names in in_base.items():
        used_by = f"profile{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}" if names else "no profile (each overrides it)"
        lines.append(f"{line} [base value; used by {used_by}]")
    if lines:
        raise OtherProfilesInvalid(
            f"{params_path}: profile {loaded!r} is valid, but {_count(lines)} of the base or other profiles "
            "(all are checked on every load, so a mistake fails now, not in the run that uses it):\n" + "\n".join(f"  {line}" for line in lines)
        )


def _has_key(section: Any, location: tuple) -> bool:
    """Whether params.yaml's mapping `section` itself sets the setting at `location` (a pydantic
    error location: a model-level error names the section, a list item its index)."""
    if not location:
        return False
    for part in location:
        if isinstance(section, dict) and part in section:
            section = section[part]
        elif isinstance(section, list) and isinstance(part, int) and part < len(section):
            section = section[part]
        else:
            return False
    return True

"""The copy server: personalized copy over HTTP from the champion release, and the feedback log.

    GET  /health    which generator serves (release, model URI), the shopper data, the feedback log's counts
                    (lines, and partial lines that dead writers left)
    POST /copy      {user, product, tone?, length?} -> one copy for this shopper and product
    POST /feedback  {serve_id, event_type, timestamp?, value?, event_id?} -> what the shopper did

A request writes `serving.candidates` copies (the shopper's strongest affinities choose the focus,
as in `copyflow generate`), withholds those that break a hard rule (advertising-law words of the
bundle's list and the maintained one, values the product does not list), and serves one of the
distinct others: by default the one the release's
preference model expects this shopper to click most, with some exploration (`serving.choice`,
components/serving/choice.py). The choice and its propensity go to the feedback log
(components/data/feedback.py) in the raw layer's formats, so the next retrain of a
`data.source: folder` profile learns from what was served, and any other copy-choosing strategy
can be scored off-policy on the same log.

The models are the champion release's, looked up again every `serving.reload_seconds`: a
promote or rollback reaches a running server without a restart, and a request is always served
whole by one model of each family.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import numpy as np
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from components.config import Config
from components.data.feedback import (
    EVENT_TYPES,
    EventIdTaken,
    FeedbackError,
    FeedbackLog,
    FeedbackLogBroken,
    UnknownServe,
    check_id,
)
from components.models.generator.focus import ANY, LENGTHS, TONES

log_rules = logging.getLogger("copyflow.serving")


class CopyRequest(BaseModel):
    user: str = Field(min_length=1, description="the shop's own user id (pseudonymized at ingestion)")
    product: str = Field(min_length=1)
    tone: Literal[(*TONES, ANY)] = ANY  # type: ignore[valid-type]
    length: Literal[(*LENGTHS, ANY)] = ANY  # type: ignore[valid-type]
    impression: bool = Field(True, description="log the impression now; false if the client reports it itself")


class CopyResponse(BaseModel):
    serve_id: str
    copy_id: str
    copy_text: str = Field(alias="copy")
    focus: list[str]
    candidates: int
    propensity: float
    choice: str
    generator: str
    model_version: str

    model_config = {"populate_by_name": True}


class FeedbackRequest(BaseModel):
    serve_id: str = Field(min_length=1)
    event_type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    timestamp: Optional[str] = Field(None, description="ISO 8601 with a UTC offset; default: now")
    value: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="order value, for purchases")
    event_id: Optional[str] = Field(None, min_length=1, description="the client's id: a retry is recorded once")


@dataclass(frozen=True)
class Loaded:
    model: Any
    ref: str      # what the loader read: a model URI or a local dir
    origin: str   # "release 3 (champion)"
    version: str  # the served copies' model_version: the registry URI, or the local output's run
    release: str | None = None  # its release (None: a local training output)


class Champion:
    """The champion release's model of one family (`generator`, `preference`), looked up again at
    most every `reload_seconds`. A new champion replaces the old one once it has loaded; requests
    arriving meanwhile wait for it.

    - The registry unreachable, or a new champion that fails to load: the model loaded last keeps
      serving, and `last_error` says why.
    - No champion (NoModel: the alias gone, nothing trained): nothing serves.
    - Nothing loaded and the last attempt failed: that failure is answered again until
      `reload_seconds` have passed, without another look-up or load per request.
    """

    def __init__(self, cfg: Config, family: str = "generator", load: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.family = family
        self._load = load or {"generator": self._load_bundle, "preference": self._load_preference}[family]
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Loaded | None = None
        self._failure: Exception | None = None  # why nothing is loaded, until the next look-up
        self._checked = float("-inf")
        self._changed = float("-inf")  # when what serves last changed (another model or release)
        self.last_error: str | None = None  # why the last look-up failed, while the previous champion serves
        self.not_loaded: str | None = None  # the champion that failed to load while an older one serves

    @property
    def loaded(self) -> Loaded | None:
        """The model serving now, without a look-up."""
        return self._current

    def _load_bundle(self, ref: str):
        from components.serving.copywriter import load_served_generator

        return load_served_generator(self.cfg, ref, backend=self.cfg.serving.backend, threads=self.cfg.serving.threads or None)

    @staticmethod
    def _load_preference(ref: str):
        from components.models.preference.api import load_preference

        return load_preference(ref)

    @property
    def checked_at(self) -> float:
        """When the registry was last looked up (this champion's clock)."""
        return self._checked

    @property
    def changed_at(self) -> float:
        """When a look-up last changed what serves: another model or another release."""
        return self._changed

    def current(self, looked_up_since: float | None = None) -> Loaded:
        """The model to serve; the registry is looked up again once `reload_seconds` have passed,
        or now when the last look-up was before `looked_up_since`."""
        from components.serving.models import NoModel, resolve_model

        with self._lock:
            now = self._clock()
            stale = looked_up_since is not None and self._checked < looked_up_since
            if now - self._checked < self.cfg.serving.reload_seconds and not stale:
                if self._current is not None:
                    return self._current
                if self._failure is not None:
                    raise self._failure.with_traceback(None)
            self._checked = now
            model = None
            try:
                model = resolve_model(self.cfg, self.family)
                if self._current is None or model.version != self._current.version:
                    loaded = Loaded(self._load(model.ref), model.ref, model.origin, model.version, model.release)
                else:
                    loaded = Loaded(self._current.model, model.ref, model.origin, model.version, model.release)
            except NoModel as exc:
                self._current, self._failure, self.last_error = None, exc, str(exc)
                raise
            except Exception as exc:  # noqa: BLE001 - whatever failed, the model loaded last can still serve
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if self._current is None:
                    self._failure = exc
                    raise
                self.not_loaded = model.origin if model is not None and model.version != self._current.version else None
                return self._current
            if self._current is None or (loaded.version, loaded.release) != (self._current.version, self._current.release):
                self._changed = now
            self._current, self._failure, self.last_error, self.not_loaded = loaded, None, None, None
            return loaded


def aligned(champion: Champion, scorer: Champion | None) -> Loaded:
    """The generator to serve, with both families' champions looked up since either last found
    a new one.

    Each family looks up its champion on its own timer, so after a promote or a rollback one
    served the new release up to `reload_seconds` before the other, and every request between
    fell to a uniform draw (one release serves, all its models together). When the two loaded
    models name different releases, one that has not looked up since the other changed looks up
    again now: once per change of the other, so a new champion that fails to load is not tried
    on every request (forcing on look-up times alone would alternate the two, one forced look-up
    per request).
    """
    model = champion.current()
    if scorer is None or scorer.loaded is None or scorer.loaded.release == model.release:
        return model
    if champion.checked_at < scorer.changed_at:
        return champion.current(looked_up_since=scorer.changed_at)
    if scorer.checked_at >= champion.changed_at:
        return model
    try:
        scorer.current(looked_up_since=champion.changed_at)
    except Exception:  # noqa: BLE001 - choosing is optional: choose_copy and /health report it
        pass
    return model


class ShopperSnapshot:
    """The clean shoppers, catalog and affinities (copywriter.ShopperData), re-read when the
    clean and features stages have written new ones, at most every `reload_seconds`. A retrain
    rewrites those folders (DVC empties a stage's outputs before running it): while they are
    missing or half-written, loading fails and the previous snapshot keeps serving."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.monotonic):
        from components.serving.choice import PREFERENCE

        self.cfg = cfg
        self.with_features = cfg.serving.choice == PREFERENCE  # samples in memory, to score candidates
        self._clock = clock
        self._lock = threading.Lock()
        self._data = None
        self._stamp: tuple | None = None
        self._checked = float("-inf")
        self.last_error: str | None = None

    def _stamp_now(self) -> tuple:
        files = [self.cfg.stage_dir(stage) / "summary.json" for stage in ("clean", "features")]
        return tuple(f.stat().st_mtime_ns if f.exists() else None for f in files)

    def current(self):
        from components.serving.copywriter import ShopperData

        with self._lock:
            if self._data is None or self._clock() - self._checked >= self.cfg.serving.reload_seconds:
                self._checked = self._clock()
                stamp = self._stamp_now()
                if self._data is not None and stamp == self._stamp:
                    self.last_error = None  # the files are again the ones in memory
                else:
                    try:
                        self._data, self._stamp, self.last_error = ShopperData.load(self.cfg, self.with_features), stamp, None
                    except (OSError, ValueError, KeyError) as exc:  # mid-retrain: missing or half-written files (SchemaError, ArrowInvalid are ValueErrors)
                        self.last_error = f"{type(exc).__name__}: {exc}"
                        if self._data is None:
                            raise ShopperDataUnavailable(self.last_error) from exc
            return self._data


class ShopperDataUnavailable(RuntimeError):
    pass


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def serving_token(cfg: Config) -> str | None:
    """The bearer token /copy and /feedback require, from the environment variable
    cfg.serving.token_env; None where it is unset or empty."""
    # Stripped: a token with a trailing newline (echo > file) could never be sent in a header.
    return (os.environ.get(cfg.serving.token_env) or "").strip() or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def create_app(cfg: Config, champion: Champion | None = None, shoppers: ShopperSnapshot | None = None,
               scorer: Champion | None = None, rng: random.Random | None = None) -> FastAPI:
    """The server for one profile. Nothing is loaded until the first request. `champion`: the
    generator; `scorer`: the preference model that chooses among candidates (serving.choice)."""
    from datetime import timedelta

    from components.data.privacy import PSEUDONYM_PREFIX
    from components.models.generator.api import GenerationInputError
    from components.models.generator.model import BrokenModel
    from components.serving.choice import PREFERENCE, Choice, choose, preference_scores
    from components.serving.copywriter import UnknownEntity, personalized_copies, withheld_summary
    from components.serving.models import NoModel
    from components.tracking import StoreUnreachable

    from mlflow.exceptions import MlflowException

    champion = champion or Champion(cfg, "generator")
    shoppers = shoppers or ShopperSnapshot(cfg)
    if scorer is None and cfg.serving.choice == PREFERENCE:
        scorer = Champion(cfg, "preference")
    rng = rng or random.SystemRandom()
    choice_errors: dict[str, str | None] = {"last": None}
    # Since start: candidates that broke a hard rule, and requests left with none to serve (/health).
    withheld: dict[str, Any] = {"candidates": 0, "requests_without_copy": 0, "last": None}
    log = FeedbackLog(cfg.feedback_dir(), max_future=timedelta(hours=cfg.validation.max_timestamp_skew_hours),
                      max_value=cfg.validation.max_event_value)
    decode = threading.Lock()  # one decoding at a time: the backends' step state is not shared-safe
    # No paths in the description: /docs and /openapi.json are open to anyone who reaches the server.
    app = FastAPI(title="copyflow copy server", description=f"profile {cfg.profile}")
    token = serving_token(cfg)
    bearer = HTTPBearer(auto_error=False)

    def authorized(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        """/copy and /feedback write the log the next release trains on: with a token set, only
        a caller that presents it may write."""
        if token is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, f"send Authorization: Bearer <the token in {cfg.serving.token_env}>", headers={"WWW-Authenticate": "Bearer"})

    app.state.champion, app.state.shoppers, app.state.feedback, app.state.scorer = champion, shoppers, log, scorer

    @app.exception_handler(RequestValidationError)
    def refuse(request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, and a JSON `Infinity` or `NaN` cannot be
        # written back into a JSON response: it would turn a 422 into a 500.
        return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(exc.errors()))})

    def serving_model() -> Loaded:
        try:
            return aligned(champion, scorer)
        except (NoModel, BrokenModel, FileNotFoundError, MlflowException, StoreUnreachable) as exc:
            raise HTTPException(503, f"no generator to serve: {exc}") from exc

    def shopper_data():
        try:
            return shoppers.current()
        except ShopperDataUnavailable as exc:
            raise HTTPException(503, f"no shopper data to personalize with (run `copyflow retrain --profile {cfg.profile}`): {exc}") from exc

    def same_release(model: Loaded, scoring: Loaded) -> None:
        """One release serves, all its models together: a preference model of another release
        than the generator's (one of the two failed to load the new champion) does not choose."""
        if scoring.release != model.release:
            failed = champion.not_loaded or (scorer.not_loaded if scorer is not None else None)
            raise ValueError(
                f"the preference model is {scoring.origin}'s and the generator {model.origin}'s"
                f"{f' ({failed} failed to load)' if failed else ''}: copies are drawn uniformly until both serve one release"
            )

    def choose_copy(model: Loaded, data, user_id: str, product: str, texts: list[str]) -> tuple[Choice, str | None]:
        """The strategy's pick among the distinct candidates, and the preference model that
        scored them. Choosing is optional: any failure of the model or of its feature row leaves
        the request to a uniform draw, and `/health` shows why."""
        scores, version = None, None
        if scorer is not None and len(texts) > 1:
            try:
                loaded = scorer.current()
                same_release(model, loaded)
                scores = preference_scores(loaded.model, cfg, data, user_id, product, texts)
                if scores is not None and not np.isfinite(scores).all():
                    raise ValueError(f"the preference model scored the candidates {np.round(scores, 4).tolist()}")
                version = loaded.version if scores is not None else None
                choice_errors["last"] = None
            except Exception as exc:  # noqa: BLE001 - see the docstring
                choice_errors["last"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                scores = None
        return choose(len(texts), scores, cfg.serving.exploration, rng), version

    def note_withheld(result, model: Loaded, servable: int) -> None:
        """Candidates that broke a hard rule are never served: counted for /health and logged
        (the rules and the product, not the shopper)."""
        why = withheld_summary(result.withheld)
        withheld["candidates"] += len(result.withheld)
        withheld["requests_without_copy"] += servable == 0
        withheld["last"] = f"product {result.product_id}: {why}"
        log_rules.warning("withheld %d of %d candidate(s) for product %s (%s), %s: %s", len(result.withheld),
                          len(result.withheld) + servable, result.product_id, model.version,
                          "no copy served" if servable == 0 else "served among the others", why)

    def no_copy_left(result, model: Loaded) -> HTTPException:
        """The request's every candidate broke a hard rule (or none was written): 503, as for
        the other "nothing may be served" answers; the client's request was fine. Sampling
        draws are seeded by the request, so the same request gets the same answer until the
        release or the shopper data changes. Counted in /health and logged (not the shopper)."""
        if result.withheld:
            why = f"all {len(result.withheld)} candidate(s) broke a hard rule ({withheld_summary(result.withheld)})"
        else:  # note_withheld logged and counted the case above
            why = "the generator wrote no candidate"
            withheld["requests_without_copy"] += 1
            withheld["last"] = f"product {result.product_id}: {why}"
            log_rules.warning("no candidate for product %s (%s), no copy served", result.product_id, model.version)
        return HTTPException(503, f"no copy of product {result.product_id} may be served: {why}; nothing was logged as served")

    def feedback_log_counts() -> dict[str, int]:
        try:
            return log.counts()
        except FeedbackLogBroken as exc:
            raise HTTPException(503, str(exc)) from exc

    @app.get("/health")
    def health() -> dict[str, Any]:
        model, data = serving_model(), shopper_data()
        scoring, error = None, choice_errors["last"]
        if scorer is not None:
            try:  # looked up as a request would, so a promote or rollback shows here without a /copy
                scoring = scorer.current()
                same_release(model, scoring)
            except Exception as exc:  # noqa: BLE001 - reported, as choose_copy would meet it
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                scoring = scoring or scorer.loaded
        chooser = {"strategy": cfg.serving.choice, "exploration": cfg.serving.exploration,
                   "preference_model": scoring.version if scoring else None, "preference_origin": scoring.origin if scoring else None,
                   "preference_not_loaded": scorer.not_loaded if scorer is not None else None, "error": error}
        return {"status": "ok", "profile": cfg.profile, "token_required": token is not None, "generator": model.origin, "model_version": model.version,
                "generator_not_loaded": champion.not_loaded, "registry_error": champion.last_error, "choice": chooser,
                "withheld": dict(withheld),
                "shoppers": {"users": len(data.users), "products": len(data.attributes), "reload_error": shoppers.last_error},
                # no paths: /health answers without a token; fragments: partial lines dead writers left
                "feedback": {**feedback_log_counts(), "fragments": log.fragments()}}

    @app.post("/copy", response_model=CopyResponse, response_model_by_alias=True, dependencies=[Depends(authorized)])
    def copy(request: CopyRequest) -> dict[str, Any]:
        try:
            check_id("user", request.user)
            check_id("product", request.product)
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from exc
        model, data = serving_model(), shopper_data()
        # Every refusal that can be decided now is, before the decoding (about 0.4 s) and
        # without waiting for another request's: a generated copy nobody may be served is waste.
        try:
            user_id = data.resolve_user_id(request.user)
            data.product_attributes(request.product)
        except UnknownEntity as exc:
            raise HTTPException(404, str(exc)) from exc
        if user_id == request.user and request.user.startswith(PSEUDONYM_PREFIX):
            # The log is ingested like the shop's export, which pseudonymizes ids: a
            # pseudonym would be hashed again and its outcomes joined to nobody.
            raise HTTPException(422, "user: send the shop's own user id, not its pseudonym")
        feedback_log_counts()  # a log that refuses the serve line (503) refuses it before the copy is written
        try:
            with decode:
                result = personalized_copies(data, model.model, request.user, request.product, n=cfg.serving.candidates,
                                             decoding=cfg.serving.decoding, tone=request.tone, length=request.length)
                distinct = list(dict.fromkeys(result.copies))
                if result.withheld:
                    note_withheld(result, model, servable=len(distinct))
                if not distinct:
                    raise no_copy_left(result, model)
                picked, scorer_version = choose_copy(model, data, user_id, request.product, distinct)
        except UnknownEntity as exc:
            raise HTTPException(404, str(exc)) from exc
        except GenerationInputError as exc:
            raise HTTPException(422, str(exc)) from exc
        chosen = distinct[picked.index]
        try:
            served = log.record_serving(request.user, request.product, chosen, model.version, candidates=len(distinct),
                                        impression=request.impression, propensity=picked.propensity, strategy=picked.strategy,
                                        candidate_texts=distinct, scores=picked.scores, scorer_version=scorer_version)
        except FeedbackLogBroken as exc:
            raise HTTPException(503, str(exc)) from exc
        return {"serve_id": served.serve_id, "copy_id": served.copy_id, "copy": chosen, "focus": result.focus,
                "candidates": len(distinct), "propensity": served.propensity, "choice": picked.strategy,
                "generator": model.origin, "model_version": model.version}

    @app.post("/feedback", dependencies=[Depends(authorized)])
    def feedback(request: FeedbackRequest) -> dict[str, str]:
        try:
            event_id = log.record_event(request.serve_id, request.event_type, request.timestamp, request.value, request.event_id)
        except UnknownServe as exc:
            raise HTTPException(404, str(exc)) from exc
        except EventIdTaken as exc:
            raise HTTPException(409, str(exc)) from exc
        except FeedbackError as exc:
            raise HTTPException(422, str(exc)) from exc
        except FeedbackLogBroken as exc:
            raise HTTPException(503, str(exc)) from exc
        return {"event_id": event_id}

    return app

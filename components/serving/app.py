"""The copy server: personalized copy over HTTP from the champion release, and the feedback log.

    GET  /health    which generator serves (release, model URI) and the feedback log's counts
    POST /copy      {user, product, tone?, length?} -> one copy for this shopper and product
    POST /feedback  {serve_id, event_type, timestamp?, value?, event_id?} -> what the shopper did

A request writes `serving.candidates` copies (the shopper's strongest affinities choose the focus,
as in `copyflow generate`) and serves one, drawn uniformly from the distinct ones. The draw and
its propensity go to the feedback log (components/data/feedback.py) in the raw layer's formats,
so the next retrain of a `data.source: folder` profile learns from what was served, and a later
copy-choosing strategy can be scored off-policy on the same log.

The generator is the champion release's, looked up again every `serving.reload_seconds`: a
promote or rollback reaches a running server without a restart, and a request is always served
whole by one model.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from components.config import Config
from components.data.feedback import EVENT_TYPES, FeedbackError, FeedbackLog, UnknownServe


class CopyRequest(BaseModel):
    user: str = Field(min_length=1, description="the shop's own user id (pseudonymized at ingestion)")
    product: str = Field(min_length=1)
    tone: Literal["plain", "lively", "elegant", "any"] = "any"
    length: Literal["short", "medium", "long", "any"] = "any"
    impression: bool = Field(True, description="log the impression now; false if the client reports it itself")


class CopyResponse(BaseModel):
    serve_id: str
    copy_id: str
    copy_text: str = Field(alias="copy")
    focus: list[str]
    candidates: int
    propensity: float
    generator: str
    model_version: str

    model_config = {"populate_by_name": True}


class FeedbackRequest(BaseModel):
    serve_id: str = Field(min_length=1)
    event_type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    timestamp: Optional[str] = Field(None, description="ISO 8601 with a UTC offset; default: now")
    value: Optional[float] = Field(None, ge=0, description="order value, for purchases")
    event_id: Optional[str] = Field(None, min_length=1, description="the client's id: a retry is recorded once")


@dataclass(frozen=True)
class Loaded:
    generator: Any
    ref: str      # the model URI (or local dir): the served copies' model_version
    origin: str   # "release 3 (champion)"


class ChampionGenerator:
    """The champion release's generator, looked up again at most every `reload_seconds`; a new
    champion is loaded before it replaces the old one, so requests never wait on an empty slot."""

    def __init__(self, cfg: Config, load: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self._load = load or self._load_bundle
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Loaded | None = None
        self._checked = float("-inf")

    def _load_bundle(self, ref: str):
        from components.models.generator.api import load_generator

        return load_generator(ref, backend=self.cfg.serving.backend, threads=self.cfg.serving.threads or None)

    def current(self) -> Loaded:
        from components.serving.models import resolve_model

        with self._lock:
            if self._current is None or self._clock() - self._checked >= self.cfg.serving.reload_seconds:
                model = resolve_model(self.cfg, "generator")
                if self._current is None or model.ref != self._current.ref:
                    self._current = Loaded(self._load(model.ref), model.ref, model.origin)
                else:
                    self._current = Loaded(self._current.generator, model.ref, model.origin)
                self._checked = self._clock()
            return self._current


def create_app(cfg: Config, champion: ChampionGenerator | None = None) -> FastAPI:
    """The server for one profile. Nothing is loaded until the first request (or `warm`)."""
    from components.data.privacy import PSEUDONYM_PREFIX
    from components.models.generator.api import GenerationInputError
    from components.models.generator.model import BrokenModel
    from components.serving.copywriter import UnknownEntity, personalized_copies, resolve_user_id
    from components.serving.models import NoModel

    from mlflow.exceptions import MlflowException

    champion = champion or ChampionGenerator(cfg)
    log = FeedbackLog(cfg.feedback_dir())
    decode = threading.Lock()  # one decoding at a time: the backends' step state is not shared-safe
    app = FastAPI(title="copyflow copy server", description=f"profile {cfg.profile}; feedback log {log.folder}")
    app.state.champion, app.state.feedback = champion, log

    def serving_model() -> Loaded:
        try:
            return champion.current()
        except (NoModel, BrokenModel, FileNotFoundError, MlflowException) as exc:
            raise HTTPException(503, f"no generator to serve: {exc}") from exc

    @app.get("/health")
    def health() -> dict[str, Any]:
        model = serving_model()
        return {"status": "ok", "profile": cfg.profile, "generator": model.origin, "model_version": model.ref,
                "feedback": {"folder": str(log.folder), **log.counts()}}

    @app.post("/copy", response_model=CopyResponse, response_model_by_alias=True)
    def copy(request: CopyRequest) -> dict[str, Any]:
        model = serving_model()
        try:
            user_id = resolve_user_id(cfg, request.user)
            if user_id == request.user and request.user.startswith(PSEUDONYM_PREFIX):
                # The log is ingested like the shop's export, which pseudonymizes ids: a
                # pseudonym would be hashed again and its outcomes joined to nobody.
                raise HTTPException(422, "user: send the shop's own user id, not its pseudonym")
            with decode:
                result = personalized_copies(cfg, model.generator, request.user, request.product, n=cfg.serving.candidates,
                                             decoding=cfg.serving.decoding, tone=request.tone, length=request.length)
        except UnknownEntity as exc:
            raise HTTPException(404, str(exc)) from exc
        except GenerationInputError as exc:
            raise HTTPException(422, str(exc)) from exc
        distinct = list(dict.fromkeys(result.copies))
        if not distinct:
            raise HTTPException(500, "the generator wrote no copy for this product")
        chosen = distinct[secrets.randbelow(len(distinct))]
        served = log.record_serving(request.user, request.product, chosen, model.ref, candidates=len(distinct), impression=request.impression)
        return {"serve_id": served.serve_id, "copy_id": served.copy_id, "copy": chosen, "focus": result.focus,
                "candidates": len(distinct), "propensity": served.propensity, "generator": model.origin, "model_version": model.ref}

    @app.post("/feedback")
    def feedback(request: FeedbackRequest) -> dict[str, str]:
        try:
            event_id = log.record_event(request.serve_id, request.event_type, request.timestamp, request.value, request.event_id)
        except FeedbackError as exc:
            raise HTTPException(404 if isinstance(exc, UnknownServe) else 422, str(exc)) from exc
        return {"event_id": event_id}

    return app

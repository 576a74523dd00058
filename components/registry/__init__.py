"""Model registry: gated registration, releases, promotion and rollback (MLflow registry).

Public API (imported lazily, so `import components.registry` stays cheap for the CLI):
    release_candidates(cfg, manifests, *, project_dir, flow_run_id, parent_run_id, ...) -> ReleaseOutcome
    promote(cfg, release=None, dry_run=False, note=None, actor=None) -> dict
    rollback(cfg, note=None, actor=None) -> dict
    status(cfg) -> dict ; render_status(status_dict) -> str ; compare(cfg, release=None) -> str
    resolve_release(alias="champion", cfg=None) -> dict
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "release_candidates": "components.registry.candidates",
    "ReleaseOutcome": "components.registry.candidates",
    "ManifestError": "components.registry.candidates",
    "promote": "components.registry.promotion",
    "rollback": "components.registry.promotion",
    "check_consistency": "components.registry.promotion",
    "PromotionRefused": "components.registry.promotion",
    "RegistryInconsistent": "components.registry.promotion",
    "status": "components.registry.status",
    "render_status": "components.registry.status",
    "compare": "components.registry.status",
    "resolve_release": "components.registry.release",
    "NoRelease": "components.registry.release",
    "PromotionBusy": "components.registry.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'components.registry' has no attribute {name!r}")

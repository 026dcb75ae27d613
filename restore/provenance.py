"""What a result was computed with, so that it can be told apart from one computed with other code or weights.

Every solver call fills ``Posterior.meta['provenance']``::

    {"solvers": [{"name": "pmrf", "options": {...}, "config": {...}}, {"name": "reddiff", ...}],
     "priors": {"flow-natural": "3f2a...", "score-natural": "91c0..."}}

``solvers`` lists each solver that ran (the top one first, then any it called for a posterior mean), with the options
it was given and its resolved config (the code's defaults filled in). ``priors`` maps each prior used to the digest of
its files (weights and model card, ``restore.priors.registry.digest``), so a retrained checkpoint or a recalibrated
card (PMRF's Euler steps live in the flow card) shows. ``stale(provenance)`` says which of these no longer hold for
the code and files here; ``benchmarks.quality --resume`` reruns such results.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Record:
    solvers: list = field(default_factory=list)
    priors: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"solvers": list(self.solvers), "priors": dict(self.priors)}


_ACTIVE: list[Record] = []  # nested recordings (a solver calling another) all see what runs inside them


@contextmanager
def recording():
    """Collect, into the yielded :class:`Record`, every solver and prior used inside the block."""
    record = Record()
    _ACTIVE.append(record)
    try:
        yield record
    finally:
        _ACTIVE.remove(record)


def _json(value) -> object:
    # tuples become lists, as they would in a results file, so that a recorded config compares equal to a fresh one
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def note_solver(name: str, options: dict, config: dict) -> None:
    entry = {"name": name, "options": _json(options), "config": _json(config)}
    for record in _ACTIVE:
        if entry not in record.solvers:
            record.solvers.append(entry)


def note_prior(name: str, digest: str | None) -> None:
    for record in _ACTIVE:
        record.priors.setdefault(name, digest)


def stale(provenance: dict) -> list[str]:
    """Why a result with this provenance would come out differently here (empty: it would not, as far as the code's
    configs and the priors' files tell): a solver's resolved config changed, or a prior's files did."""
    from restore.priors import registry
    from restore.solvers import base

    reasons = []
    for s in provenance.get("solvers", []):
        try:
            now = _json(dataclasses.asdict(base.get(s["name"], **s.get("options", {})).config))
        except (ValueError, KeyError) as exc:  # the solver or one of its options is gone
            reasons.append(f"solver {s['name']}: {exc}")
            continue
        changed = sorted(k for k in set(now) | set(s["config"]) if now.get(k) != s["config"].get(k))
        if changed:
            reasons.append(f"solver {s['name']} defaults changed: {', '.join(changed)}")
    for name, digest in provenance.get("priors", {}).items():
        base_name = name.split("@")[0]  # a quantised prior is named NAME@SCHEME
        # digest None: a prior made outside the registry, nothing to compare
        if digest is not None and base_name in registry.PRIORS and registry.digest(base_name) != digest:
            reasons.append(f"prior {base_name}: files changed")
    return reasons

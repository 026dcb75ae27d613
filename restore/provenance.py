"""What a result was computed with, so that it can be told apart from one computed with other code or weights.

Every solver call fills ``Posterior.meta['provenance']``::

    {"solvers": [{"name": "pmrf", "options": {...}, "config": {...}}, {"name": "reddiff", ...}],
     "priors": {"flow-natural": "3f2a...", "score-natural": "91c0..."}}

``solvers`` lists each solver that ran (the top one first, then any it called for a posterior mean), with the options
it was given and its resolved config (the code's defaults filled in). ``priors`` maps each prior used to the digest of
its files (weights and model card, ``restore.priors.registry.digest``), so a retrained checkpoint or a recalibrated
card (PMRF's Euler steps live in the flow card) shows. This module is a leaf that solvers and the prior registry
report into; ``restore.stale.reasons(provenance)`` says which of these no longer hold for the code and files here
(``benchmarks.quality --resume`` reruns such results).
"""

from __future__ import annotations

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


def canonical(value) -> object:
    """``value`` as a results file would hold it (tuples as lists, keys sorted, odd types as strings), so that a
    recorded config compares equal to a fresh one."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def note_solver(name: str, options: dict, config: dict) -> None:
    entry = {"name": name, "options": canonical(options), "config": canonical(config)}
    for record in _ACTIVE:
        if entry not in record.solvers:
            record.solvers.append(entry)


def note_prior(name: str, digest: str | None) -> None:
    for record in _ACTIVE:
        record.priors.setdefault(name, digest)


def family_entry(per_family: dict | None, family: str | None) -> dict:
    """A solver's ``per_family`` settings for ``family``: its own entry, else its kind's ('inpaint-region' ->
    'inpaint', 'sr4' -> 'sr', 'denoise-real' -> 'denoise'); {} when neither has one."""
    if not per_family or family is None:
        return {}
    if family in per_family:
        return dict(per_family[family] or {})
    kind = family.split("-")[0].rstrip("0123456789")
    return dict(per_family.get(kind) or {})


def without_prior(config: dict) -> dict:
    """A canonical config (or options) without the prior it names (VBLE's ``prior`` and its ``per_family`` entries):
    which prior ran is told by the priors' names and digests, and a calibration table or cached run belongs to one
    prior whichever setting picked it (``restore.stale.reasons`` checks the choice itself)."""
    out = {k: v for k, v in config.items() if k != "prior"}
    if isinstance(out.get("per_family"), dict):
        entries = {f: {k: v for k, v in (entry or {}).items() if k != "prior"} for f, entry in out["per_family"].items()}
        out["per_family"] = {f: e for f, e in entries.items() if e} or None
    return out


def for_family(config: dict, options: dict, family: str | None, fixed: set[str] | None = None) -> dict:
    """The settings a solver with this (canonical) ``config`` runs a task of ``family`` with (a task kind, or a
    family such as 'inpaint-region' or 'sr4': :func:`family_entry`): a ``per_family`` table (RED-Diff's,
    PMRF's, ...) resolved for it, options given explicitly winning over it as at run time (the dict form of
    ``Solver.settings_for``; ``fixed``: the fields the table must leave alone, ``Solver._fixed_options``, by default
    the options' own). ``family`` None, or a config without such a table: the config as it is."""
    if family is None or "per_family" not in config:
        return config
    fixed = set(options) if fixed is None else fixed
    out = {k: v for k, v in config.items() if k != "per_family"}
    out.update({k: v for k, v in family_entry(config.get("per_family"), family).items() if k not in fixed})
    return out


def changed(now: dict, then: dict, defaults: dict | None = None) -> list[str]:
    """The settings that differ between two resolved configs (:func:`for_family`'s output), sorted. A setting only
    ``now`` has is an option added since ``then`` was recorded: with the solver's canonical top-level ``defaults`` it
    counts only where its value now is not its default, since a new option's default keeps the old behaviour (a
    per-family value that departs from the default still counts; so does a ``per_family`` table itself)."""
    defaults = defaults or {}
    return sorted(k for k in set(now) | set(then)
                  if now.get(k) != then.get(k)
                  and not (k not in then and k != "per_family" and k in defaults and now[k] == defaults[k]))

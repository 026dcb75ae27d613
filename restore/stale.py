"""Whether a recorded result would come out the same today: its provenance (``restore.provenance``) checked against
the solvers' current configs and the priors' files. Kept apart from ``restore.provenance`` so that module stays a
leaf the solver base and the prior registry report into, with no imports back."""

from __future__ import annotations

import dataclasses

from restore.priors import registry
from restore.provenance import canonical, changed, for_family, without_prior
from restore.solvers import base


def _solver_class(solver: str) -> type[base.Solver] | None:
    """Solver ``solver``'s class, None for a solver this version does not have."""
    try:
        return base.solver_class(solver)
    except (ValueError, KeyError):
        return None


def default_config(solver: str) -> dict:
    """What a record of solver ``solver`` made before one of its options existed ran with: the canonical top-level
    defaults of its config, except where an option came with a new default (``Solver.former_defaults``: the value
    the code had before it) (:func:`restore.provenance.changed`'s ``defaults``); {} for a solver this version does
    not have."""
    cls = _solver_class(solver)
    return {} if cls is None else canonical({**dataclasses.asdict(cls.config_cls()), **cls.former_defaults})


def settings_changed(solver: str, now: dict, then: dict, options: dict, family: str | None) -> list[str]:
    """The settings in which solver ``solver`` runs a task of ``family`` differently under canonical config ``now``
    than under the recorded ``then`` (both resolved for the family with the explicit ``options``:
    :func:`restore.provenance.for_family`; an option added since counts only off its default:
    :func:`restore.provenance.changed`), sorted; empty when it runs the same. The prior a config picks is not a
    setting here (:func:`restore.provenance.without_prior`; :func:`reasons` checks it), nor is one that acts on
    no task of the family under either config (``Solver.inert_settings``: ScoreDVI's noise estimator on a task that
    states its noise level)."""
    fixed = fixed_options(solver, options)
    now, then, options = without_prior(now), without_prior(then), without_prior(options)
    now, then = for_family(now, options, family, fixed), for_family(then, options, family, fixed)
    inert = (_solver_class(solver) or base.Solver).inert_settings
    idle = inert(now, family) & inert(then, family)
    return changed({k: v for k, v in now.items() if k not in idle}, {k: v for k, v in then.items() if k not in idle},
                   without_prior(default_config(solver)))


def fixed_options(solver: str, options: dict) -> set[str]:
    """The config fields solver ``solver`` keeps out of its per-family table when given ``options``
    (``Solver._fixed_options``: PMRF holds a mean source and its options as one); the options' own names for a solver
    or option this version does not have."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a settings warning belongs to the run, not to this bookkeeping
            return base.get(solver, **options)._fixed_options()
    except (ValueError, KeyError, TypeError):
        return set(options)


def reasons(provenance: dict, family: str | None = None) -> list[str]:
    """Why a result with this provenance would come out differently here (empty: it would not, as far as the code's
    configs and the priors' files tell): a solver's resolved config changed, or a prior's files did. With the task's
    ``family`` ('denoise', 'sr4', 'inpaint-region', ...: ``Task.family``) a per-family default changed for another
    family does not count."""
    found = []
    for s in provenance.get("solvers", []):
        options = s.get("options", {})
        try:
            solver = base.get(s["name"], **options)
        except (ValueError, KeyError) as exc:  # the solver or one of its options is gone
            found.append(f"solver {s['name']}: {exc}")
            continue
        differ = settings_changed(s["name"], canonical(dataclasses.asdict(solver.config)), s["config"], options,
                                  family)
        if differ:
            found.append(f"solver {s['name']} defaults changed: {', '.join(differ)}")
        # a solver that picks its prior per family (VBLE's CAE rate; a prior named to it is among its options)
        if s is provenance["solvers"][0] and family is not None and base.config_has(s["name"], "prior"):
            pick = solver.prior_for(family)
            ran = {registry.split_name(name)[0] for name in provenance.get("priors", {})}
            if ran and pick not in ran:
                found.append(f"solver {s['name']} now runs {family} on prior {pick} (ran on {', '.join(sorted(ran))})")
    for name, digest in provenance.get("priors", {}).items():
        base_name = registry.split_name(name)[0]  # a quantised prior is named NAME@SCHEME
        # digest None: a prior made outside the registry, nothing to compare
        if digest is not None and base_name in registry.PRIORS and registry.digest(base_name) != digest:
            found.append(f"prior {base_name}: files changed")
    return found

"""restore: Bayesian image restoration with posterior samples and uncertainty maps.

    from restore import restore
    post = restore("photo.png", "deblur:gaussian:sigma=2,noise=0.01", samples=8, seed=0)  # the recommended solver
    post.mean, post.samples, post.std, post.interval(0.9)   # std and interval calibrated where a table covers the run
    post.spread, post.meta["uncertainty"]                   # the raw sample spread; calibration status and self-check
"""

__version__ = "0.1.0"

__all__ = ["restore", "Restorer", "Posterior", "Task", "parse_task", "__version__"]


def __getattr__(name):  # lazy: keep `import restore` cheap (torch/deepinv load on first use)
    if name in ("restore", "Restorer"):
        from restore import api

        return getattr(api, name)
    if name == "Posterior":
        from restore.posterior import Posterior

        return Posterior
    if name in ("Task", "parse_task"):
        from restore import tasks

        return tasks.Task if name == "Task" else tasks.parse
    raise AttributeError(f"module 'restore' has no attribute {name!r}")

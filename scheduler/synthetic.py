"""Synthetic app profiles and random problems (for benchmarks, tests and example traces).

They imitate multi-capacity models: descendants grow geometrically in bytes, latency grows
sub-linearly with bytes, and accuracy rises with diminishing returns. They are clearly not
measurements; real problems come from profiles.
"""

from __future__ import annotations

import numpy as np

from scheduler.problem import App, Descendant, Problem
from scheduler.sharing import Residency


def synthetic_app(
    rng: np.random.Generator, name: str, n_descendants: int = 5, load: float = 1.0
) -> App:
    """A random nested-model app; `load` scales how hard its latency target is to meet."""
    memory = rng.uniform(0.2e6, 1.0e6) * rng.uniform(1.4, 2.2) ** np.arange(n_descendants)
    latency = rng.uniform(2e-3, 8e-3) * (memory / memory[0]) ** rng.uniform(0.6, 0.9)
    level = np.linspace(0.0, 1.0, n_descendants)
    top, spread = rng.uniform(0.80, 0.95), rng.uniform(0.08, 0.25)
    accuracy = top - spread * (1.0 - level) ** rng.uniform(1.2, 2.5)
    target = float(np.median(latency)) * rng.uniform(0.7, 1.6) * load
    return App.from_columns(
        name,
        accuracies=[round(float(a), 4) for a in accuracy],
        memory_bytes=[int(m) for m in memory],
        latencies_s=[round(float(t), 6) for t in latency],
        target_latency_s=round(target, 6),
        priority=round(float(rng.uniform(0.5, 2.0)), 3),
    )


def random_problem(
    seed: int, n_apps: int, n_descendants: int = 5, share_step: float = 0.01, alpha: float = 1.0
) -> Problem:
    """A random problem where memory and compute both bind.

    Latency targets scale with the number of apps (each app's fair share is 1 / n_apps) and
    the memory budget lies between the smallest and the largest descendants' totals.
    """
    rng = np.random.default_rng(seed)
    apps = [synthetic_app(rng, f"app{i}", n_descendants, load=float(n_apps)) for i in range(n_apps)]
    smallest = sum(min(d.memory_bytes for d in a.descendants) for a in apps)
    largest = sum(max(d.memory_bytes for d in a.descendants) for a in apps)
    budget = int(smallest + rng.uniform(0.25, 0.75) * (largest - smallest))
    return Problem(apps=apps, memory_budget_bytes=budget, alpha=alpha, share_step=share_step)


def random_shared_problem(
    seed: int,
    n_apps: int,
    n_models: int,
    n_descendants: int = 5,
    share_step: float = 0.01,
    alpha: float = 1.0,
    floor_fraction: float = 0.25,
) -> Problem:
    """A random problem in which apps share models, as the daemon builds them.

    `n_models` synthetic models; descendant k of model m has id "model<m>#<k>". Every app
    runs a random model with its own latency target and priority; a `floor_fraction` of the
    apps see only the model's more accurate descendants (a min_accuracy floor: the top 1 to
    D - 1). The memory budget lies 25-75 % of the way from the least memory any plan needs
    to every descendant of every model in use resident at once.
    """
    rng = np.random.default_rng(seed)
    models = []
    for m in range(n_models):
        template = synthetic_app(rng, f"model{m}", n_descendants)
        models.append(
            [
                d.model_copy(update={"id": f"model{m}#{k}"})
                for k, d in enumerate(template.descendants)
            ]
        )
    apps = [_app_of_model(rng, f"app{i}", models, floor_fraction, n_apps) for i in range(n_apps)]
    used = {d.id: d.memory_bytes for a in apps for d in a.descendants}
    least = Residency.of(apps).least_memory()
    budget = int(least + rng.uniform(0.25, 0.75) * (sum(used.values()) - least))
    return Problem(apps=apps, memory_budget_bytes=budget, alpha=alpha, share_step=share_step)


def _app_of_model(
    rng: np.random.Generator,
    name: str,
    models: list[list[Descendant]],
    floor_fraction: float,
    load: float,
) -> App:
    """An app running a random model, maybe only its top descendants; its own target and
    priority (the target scaled by `load`, as in `synthetic_app`)."""
    model = models[int(rng.integers(len(models)))]
    if len(model) > 1 and rng.random() < floor_fraction:
        model = model[int(rng.integers(1, len(model))) :]
    latency = [d.latency_s for d in model]
    target = float(np.median(latency)) * rng.uniform(0.7, 1.6) * load
    return App(
        name=name,
        target_latency_s=round(target, 6),
        priority=round(float(rng.uniform(0.5, 2.0)), 3),
        descendants=model,
    )


def synthetic_pool(seed: int = 0, size: int = 4, n_descendants: int = 5) -> list[App]:
    """A pool of app profiles for random traces; targets are one 30 fps frame (33 ms)."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(size):
        app = synthetic_app(rng, f"synthetic{i}", n_descendants)
        scale = rng.uniform(0.25, 0.6) * (1.0 / 30.0) / app.descendants[-1].latency_s
        pool.append(
            App.from_columns(
                app.name,
                accuracies=[d.accuracy for d in app.descendants],
                memory_bytes=[d.memory_bytes * 4 for d in app.descendants],
                latencies_s=[round(d.latency_s * scale, 6) for d in app.descendants],
                target_latency_s=round(1.0 / 30.0, 6),
            )
        )
    return pool

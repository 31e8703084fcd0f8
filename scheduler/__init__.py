"""Scheduler: cost model, MinTotalCost / MinMaxCost solvers, baselines and trace simulator."""

from scheduler.cost import cost
from scheduler.problem import (
    App,
    Assignment,
    Descendant,
    Problem,
    Resident,
    Solution,
    load_problem,
    parse_problem,
)
from scheduler.simulate import SimulationResult, SwapModel, Trace, random_trace, simulate
from scheduler.solve import (
    Tolerance,
    baseline,
    independent,
    min_max_cost,
    min_total_cost,
    resolve,
    smallest,
    solve,
)

__all__ = [
    "App",
    "Assignment",
    "Descendant",
    "Problem",
    "Resident",
    "SimulationResult",
    "Solution",
    "SwapModel",
    "Tolerance",
    "Trace",
    "baseline",
    "cost",
    "independent",
    "load_problem",
    "min_max_cost",
    "min_total_cost",
    "parse_problem",
    "random_trace",
    "resolve",
    "simulate",
    "smallest",
    "solve",
]

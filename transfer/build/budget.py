"""Time for a build: what ``--budget-minutes`` can afford, and how long the build has left.

The plan is priced from measured times (the student's seconds per training step, timed on real
batches; each teacher's seconds per example of feature extraction, timed while ranking) plus a
fixed allowance for the export and the latency table. When it does not fit, the plan gives way in
one stated order, ``DEGRADATION_ORDER``, and says what it gave up. STL is never dropped.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

DEGRADATION_ORDER = (
    "fewer betas per method (the outermost first, largest before smallest, down to one each)",
    "fewer teachers (the lowest ranked first, down to one)",
    "fewer steps (halved, down to MIN_EPOCHS epochs of the hold-out split)",
    "fewer methods (the last listed first; STL always stays, with at least one teacher method)",
    "fewer training examples (down to those ranked, whose teacher features are already extracted)",
)
MIN_EPOCHS = 2
# Allowances for the steps that are not training, measured on this project's 2-core machine with the
# ResNet-18 student on digits: an fp32 and an int8 export with their parity and accuracy checks took
# 30-60 s under load; timing one teacher against the student 10-30 s.
EXPORT_SECONDS = 60.0
LATENCY_SECONDS_PER_TEACHER = 20.0
# Each run is a worker process: starting Python and torch, loading the data and the student, and (trials) the
# test evaluation after it took 40-55 s per run on the loaded 2-core machine (load average ~10), on top of its steps.
RUN_START_SECONDS = 40.0
SAFETY = 1.15  # evaluations, process starts and catalog writes on top of the timed steps


@dataclass
class Costs:
    """Measured prices: seconds per training step, and per teacher seconds per extracted example."""

    step_seconds: float
    batch_size: int
    holdout_fraction: float
    extract_per_example: dict[str, float] = field(default_factory=dict)
    ranked_examples: int | None = None   # the teachers' features of the first N examples are already cached
    parallel: int = 1                    # trials at once: their start-up times overlap, their steps share the cores

    def steps_per_epoch(self, n: int, final: bool) -> int:
        fit = n if final else n - math.ceil(self.holdout_fraction * n)
        return math.ceil(fit / min(self.batch_size, n))

    def extract_seconds(self, teacher: str, n: int) -> float:
        return 0.0 if n == self.ranked_examples else self.extract_per_example.get(teacher, 0.0) * n


@dataclass
class Plan:
    methods: list[str]                       # STL first
    betas: dict[str, list[float]]            # per regularised method
    teachers: list[str]                      # best ranked first
    steps: int
    examples: int                            # training examples used (the first N of the training split)
    degraded: list[str] = field(default_factory=list)
    estimate_seconds: float | None = None
    fits: bool = True

    def trials(self) -> list[tuple[str, float | None]]:
        """(method, beta) of each hold-out trial, STL first (beta None)."""
        return [(m, None) if m == "stl" else (m, b) for m in self.methods for b in ([None] if m == "stl"
                                                                                     else self.betas[m])]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**d)


def estimate(plan: Plan, costs: Costs) -> float:
    """Seconds the plan still needs: extraction of its teachers' features, every trial, the final run, export."""
    trial = final = plan.steps * costs.step_seconds  # the trainer runs exactly the steps asked
    extract = sum(costs.extract_seconds(t, plan.examples) for t in plan.teachers)
    starts = RUN_START_SECONDS * (math.ceil(len(plan.trials()) / costs.parallel) + 1)
    fixed = EXPORT_SECONDS + LATENCY_SECONDS_PER_TEACHER * len(plan.teachers) + starts
    return SAFETY * (len(plan.trials()) * trial + final) + extract + fixed


def _drop_one_beta(plan: Plan) -> bool:
    widest = max((m for m in plan.methods if m != "stl"), key=lambda m: len(plan.betas[m]), default=None)
    if widest is None or len(plan.betas[widest]) <= 1:
        return False
    grid = sorted(plan.betas[widest])
    # Alternate ends so that the middle of the grid stays: largest first when the count is even.
    grid = grid[:-1] if len(grid) % 2 == 0 else grid[1:]
    plan.betas[widest] = grid
    plan.degraded.append(f"{widest}: betas {', '.join(f'{b:g}' for b in grid)}")
    return True


def _drop_one_teacher(plan: Plan) -> bool:
    if len(plan.teachers) <= 1:
        return False
    gone = plan.teachers.pop()
    plan.degraded.append(f"teacher {gone} left out")
    return True


def _halve_steps(plan: Plan, costs: Costs) -> bool:
    floor = MIN_EPOCHS * costs.steps_per_epoch(plan.examples, False)
    if plan.steps <= floor:
        return False
    plan.steps = max(floor, plan.steps // 2)
    plan.degraded.append(f"steps {plan.steps}")
    return True


def _drop_one_method(plan: Plan) -> bool:
    regularised = [m for m in plan.methods if m != "stl"]
    if len(regularised) <= 1:
        return False
    gone = regularised[-1]
    plan.methods.remove(gone)
    plan.degraded.append(f"method {gone} left out")
    return True


def _fewer_examples(plan: Plan, costs: Costs) -> bool:
    if costs.ranked_examples is None or plan.examples <= costs.ranked_examples or not plan.teachers:
        return False
    plan.examples = costs.ranked_examples
    plan.degraded.append(f"the first {plan.examples:,} training examples (those ranked)")
    return True


def fit(plan: Plan, costs: Costs, seconds: float | None) -> Plan:
    """The plan shrunk, in ``DEGRADATION_ORDER``, until its estimate fits ``seconds`` (None: no budget)."""
    plan, asked = Plan.from_dict(plan.to_dict()), plan.steps
    if seconds is not None:
        for shrink in (_drop_one_beta, _drop_one_teacher, lambda p: _halve_steps(p, costs), _drop_one_method,
                       lambda p: _fewer_examples(p, costs)):
            while estimate(plan, costs) > seconds and shrink(plan):
                pass
        _regrow_steps(plan, costs, seconds, asked)
    plan.estimate_seconds = round(estimate(plan, costs), 1)
    plan.fits = seconds is None or plan.estimate_seconds <= seconds
    return plan


def _regrow_steps(plan: Plan, costs: Costs, seconds: float, asked: int) -> None:
    """A later cut (fewer examples) can leave room: give the steps back, doubling, while the plan still fits."""
    while plan.steps < asked:
        trial = Plan.from_dict({**plan.to_dict(), "steps": min(asked, 2 * plan.steps)})
        if estimate(trial, costs) > seconds:
            return
        plan.steps = trial.steps
        plan.degraded.append(f"steps back up to {plan.steps} (room left after the cuts)")


class Clock:
    """Wall time since the build started, against its budget (None: unbounded)."""

    def __init__(self, budget_minutes: float | None):
        self.started = time.monotonic()
        self.budget = None if budget_minutes is None else 60.0 * float(budget_minutes)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float | None:
        return None if self.budget is None else self.budget - self.elapsed()


class StepRate:
    """Seconds per training step measured on the trials as they run (all parallel workers together)."""

    def __init__(self, prior_seconds: float):
        self.prior = prior_seconds
        self.started: float | None = None
        self.steps0 = 0

    def observe_start(self, steps_done: int) -> None:
        if self.started is None:
            self.started, self.steps0 = time.monotonic(), steps_done

    def seconds_per_step(self, steps_done: int) -> float:
        done = steps_done - self.steps0
        if self.started is None or done < 3:
            return self.prior
        return (time.monotonic() - self.started) / done

    def time_left(self, steps_done: int, steps_total: int, extra: float) -> float:
        return max(0.0, steps_total - steps_done) * self.seconds_per_step(steps_done) + extra

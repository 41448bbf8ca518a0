"""PaddleSlim's GMP (gradual magnitude pruning) schedule as a pure function of the iteration."""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping

from .validation import check_ratio

__all__ = ["GMPSchedule"]

_REQUIRED = ("stable_iterations", "pruning_iterations", "tunning_iterations", "resume_iteration",
             "pruning_steps", "initial_ratio")


def _int_key(configs: Mapping[str, Any], key: str, minimum: int) -> int:
    v = configs[key]
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"configs[{key!r}] must be an int; got {v!r}")
    if v < minimum:
        raise ValueError(f"configs[{key!r}] must be >= {minimum}; got {v!r}")
    return int(v)


@dataclass(frozen=True)
class GMPSchedule:
    """Ratio in force after ``step()`` at iteration i (0-based), exactly as PaddleSlim computes it.

    The ratio changes every ``pruning_iterations // pruning_steps`` iterations: ``0`` for
    ``int(stable / pruning * steps)`` periods, then ``initial + (target - initial) * (1 - (1 - s/steps)**3)``
    for s = 0 .. steps-1, then ``target``.

    >>> s = GMPSchedule.from_configs({'stable_iterations': 0, 'pruning_iterations': 100,
    ...     'tunning_iterations': 100, 'resume_iteration': -1, 'pruning_steps': 5,
    ...     'initial_ratio': 0.1}, target=0.5)
    >>> [round(s.ratio_at(i), 4) for i in (0, 19, 20, 99, 100, 150)]
    [0.1, 0.1, 0.2952, 0.4968, 0.5, 0.5]
    """

    target: float
    initial_ratio: float
    stable_iterations: int
    pruning_iterations: int
    tuning_iterations: int
    pruning_steps: int
    resume_iteration: int

    @classmethod
    def from_configs(cls, configs: Any, target: float) -> "GMPSchedule":
        if configs is None:
            raise ValueError("configs is required for GMP pruning: a dict with keys " + ", ".join(_REQUIRED))
        if not isinstance(configs, Mapping):
            raise TypeError(f"configs must be a dict; got {type(configs).__name__}")
        configs = dict(configs)
        if "tunning_iterations" not in configs and "tuning_iterations" in configs:
            configs["tunning_iterations"] = configs["tuning_iterations"]
        elif "tunning_iterations" in configs and "tuning_iterations" in configs \
                and configs["tunning_iterations"] != configs["tuning_iterations"]:
            raise ValueError("configs gives both 'tunning_iterations' and 'tuning_iterations' with different "
                             f"values: {configs['tunning_iterations']!r} != {configs['tuning_iterations']!r}")
        missing = [k for k in _REQUIRED if k not in configs]
        if missing:
            raise ValueError(f"configs is missing {missing}; GMP needs " + ", ".join(_REQUIRED))
        unknown = sorted(set(configs) - set(_REQUIRED) - {"tuning_iterations"})
        if unknown:
            raise ValueError(f"configs has unknown keys {unknown}; GMP takes " + ", ".join(_REQUIRED))
        steps = _int_key(configs, "pruning_steps", 1)
        pruning = _int_key(configs, "pruning_iterations", 1)
        if not pruning / steps > 10:
            raise ValueError(
                f"configs['pruning_iterations'] / configs['pruning_steps'] must exceed 10; got {pruning} / {steps}"
            )
        initial = configs["initial_ratio"]
        if isinstance(initial, bool) or not isinstance(initial, Real):
            raise TypeError(f"configs['initial_ratio'] must be a float; got {initial!r}")
        initial = check_ratio(initial, "configs['initial_ratio']")
        target = check_ratio(target, "ratio")
        if initial > target:
            raise ValueError(f"configs['initial_ratio'] ({initial}) must not exceed ratio ({target})")
        return cls(
            target=target,
            initial_ratio=initial,
            stable_iterations=_int_key(configs, "stable_iterations", 0),
            pruning_iterations=pruning,
            tuning_iterations=_int_key(configs, "tunning_iterations", 0),
            pruning_steps=steps,
            resume_iteration=_int_key(configs, "resume_iteration", -1),
        )

    @property
    def period(self) -> int:
        """Iterations between two ratio changes."""
        return self.pruning_iterations // self.pruning_steps

    @property
    def stable_periods(self) -> int:
        return int(float(self.stable_iterations) / self.pruning_iterations * self.pruning_steps)

    def ratio_at(self, iteration: int) -> float:
        """The ratio after step() at ``iteration``; 0.0 before the first step (iteration < 0)."""
        if iteration < 0:
            return 0.0
        j = iteration // self.period - self.stable_periods
        if j < 0:
            return 0.0
        if j < self.pruning_steps:
            cubic = ((j / self.pruning_steps) - 1.0) ** 3 + 1
            return cubic * (self.target - self.initial_ratio) + self.initial_ratio
        return self.target

    def start_iteration(self) -> int:
        """Iteration the first step() runs at: ``resume_iteration`` as given (PaddleSlim counts from it, -1 too)."""
        return self.resume_iteration

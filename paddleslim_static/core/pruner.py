"""The one pruner: magnitude-pruning state and its lifecycle, for any mode (no Paddle import).

A :class:`Pruner` owns the state (mode, ratio, threshold(s), iteration, optional GMP schedule) and the steps; a
*backend* owns the weights and masks of one mode (dygraph layers, or a static program and its scope). The mode
packages build a backend and pass it in; a GMP pruner is the same class given a :class:`GMPSchedule`.

Lifecycle, and what each stage may change:

1. ``__init__`` validates every argument and asks the backend to validate the target (``backend.check_attach``)
   before anything is changed; only then ``backend.attach`` creates the masks (all True). A constructor that
   raises leaves the target as it was.
2. ``step()`` asks the backend whether it can keep its promise (``backend.check_step``: e.g. a replaced weight, or
   parameter updates without mask ops), computes the new threshold(s) from the current weights, and only when that
   succeeded writes masks and weights and commits the new state. A step that raises changes nothing.
3. ``finalize()`` applies the masks for good and detaches the backend; the pruner then refuses every call.

>>> import numpy as np
>>> from paddleslim_static.core.pruner import ArrayBackend, Pruner
>>> w = {"w": np.array([[0.5, 0.1], [0.3, -0.9]], np.float32)}
>>> pruner = Pruner(ArrayBackend(w), mode="ratio", ratio=0.5)
>>> pruner.step()
>>> w["w"].tolist(), pruner.threshold
([[0.5, 0.0], [0.0, -0.8999999761581421]], 0.5)
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import allocation, engine
from .backend import ArrayBackend, Arrays, Backend
from .options import check_options, resolve_targets
from .packing import pack_mask
from .params import resolve_prunable
from .schedule import GMPSchedule
from .selection import NonFiniteScoreError, SelectionStats, prune_count
from .state import STATE_VERSION, Config, check_fingerprints, fingerprints, parse_state, restored_masks
from .validation import check_ratio

__all__ = ["Backend", "Pruner", "ArrayBackend", "Arrays", "STATE_VERSION"]

_log = logging.getLogger(__name__)

_F32_MAX = float(np.finfo(np.float32).max)


class Pruner:
    """Unstructured magnitude pruning over a backend (see the module docstring for the lifecycle).

    ``schedule`` makes it a GMP pruner: the ratio follows the schedule and masks are recomputed only when the ratio
    changes (and on the first step after a ``resume_iteration`` or :meth:`seek`).
    """

    _engine: engine.Engine = engine.HOST  # the engine of the arrays the current call works on (see _work)
    # warm start of the next ratio selection: the pruner's own last thresholds (the engine keeps no state)
    _hint: Optional[float] = None
    _hint_width: Optional[float] = None
    _local_hints: Optional[Dict[str, float]] = None
    _pending_stats: Optional[SelectionStats] = None
    selection_stats: Optional[SelectionStats] = None  # what the last committed ratio selection did (passes, ...)

    def __init__(
        self,
        backend: Backend,
        *,
        mode: str,
        ratio: float = 0.3,
        threshold: float = 0.01,
        prune_params_type: Optional[str] = None,
        skip_params_func: Optional[Callable[[Any], Iterable[str]]] = None,
        local_sparsity: bool = False,
        sparse_block: Sequence[int] = (1, 1),
        schedule: Optional[GMPSchedule] = None,
        sparse_pattern: Optional[str] = None,
        collectives: Any = None,
        sparsity_allocation: Optional[str] = None,
        min_density: float = 0.0,
    ) -> None:
        opts = check_options(
            mode=mode, ratio=ratio, threshold=threshold, prune_params_type=prune_params_type,
            skip_params_func=skip_params_func, local_sparsity=local_sparsity, sparse_block=sparse_block,
            schedule=schedule, sparse_pattern=sparse_pattern, collectives=collectives,
            sparsity_allocation=sparsity_allocation, min_density=min_density,
        )
        targets = resolve_targets(backend.param_infos(), backend.target, opts)
        names, shapes = targets.names, targets.shapes
        if opts.mode == "ratio" and collectives is None:  # with collectives the floors are checked over all ranks
            allocation.check_feasible(names, [int(np.prod(shapes[n], dtype=np.int64)) for n in names],
                                      schedule.target if schedule is not None else opts.ratio, opts.min_density)
        backend.check_attach(names, self)
        # every attribute exists before the backend is asked to change anything
        self._backend = backend
        self._prunable: List[str] = names
        self.mode = opts.mode
        self.local_sparsity = opts.local_sparsity
        self.sparsity_allocation = "uniform" if opts.local_sparsity else opts.allocation
        self.min_density = opts.min_density
        self.protected_params: List[str] = []  # layers the last ratio selection kept at their floor
        self._pending_protected: List[str] = []
        self._shapes = shapes
        self.sparse_block: Tuple[int, int] = opts.block
        self.sparse_pattern: Optional[Tuple[int, int]] = opts.pattern
        self._collectives = collectives
        self._layouts = targets.layouts
        self.prune_params_type = opts.prune_params_type
        self.skip_params = targets.skipped
        self.threshold = float(opts.threshold)  # as given; compared in float32
        self.thresholds: Dict[str, float] = {}
        self._schedule = schedule
        self._finalized = False
        if schedule is None:
            self.ratio = opts.ratio
            self.cur_iteration = 0
            self._recompute_next = False
        else:
            self.cur_iteration = schedule.start_iteration()
            self.ratio = schedule.ratio_at(self.cur_iteration - 1)
            self._recompute_next = self.cur_iteration > 0
        backend.attach(names, self)
        if self.mode == "threshold" and backend.weights_ready():  # otherwise on first use, see _masks_reset
            self._masks_from_threshold(apply=backend.apply_on_attach)
        _log.debug("pruning %d of %d parameters (mode=%s)", len(names), targets.n_params, self.mode)

    # -- state -------------------------------------------------------------------------------------
    @property
    def prunable_params(self) -> List[str]:
        """Names of the parameters this pruner masks."""
        return list(self._prunable)

    @property
    def schedule(self) -> Optional[GMPSchedule]:
        """The GMP schedule (None for a plain ratio/threshold pruner)."""
        return self._schedule

    @property
    def target_ratio(self) -> float:
        """GMP: the ratio the schedule ends at; otherwise the ratio."""
        return self._schedule.target if self._schedule is not None else self.ratio

    @property
    def finalized(self) -> bool:
        return self._finalized

    # -- steps -------------------------------------------------------------------------------------
    def step(self) -> None:
        """Ratio mode: new threshold(s) from the current weights, then masks; threshold mode: masks. GMP: the ratio
        of this iteration, masks recomputed when it changed. Pruned weights are exactly 0 when it returns; when it
        raises, nothing changed."""
        self._check_live()
        self._backend.check_step()
        reset = self._masks_reset()
        ratio, recompute = self.ratio, True
        if self._schedule is not None:
            ratio = self._schedule.ratio_at(self.cur_iteration)
            recompute = reset or self._recompute_next or ratio != self.ratio
        with self._work() as (eng, weights, masks):
            if not recompute:
                eng.apply_masks(weights, masks)
                g, per = self.threshold, self.thresholds
            else:
                sources = None
                g, per = self.threshold, {}
                if self.mode == "ratio":
                    sources = eng.score_sources(weights, self.sparse_block)
                    g, per = self._thresholds_for(weights, ratio, sources)
                self._fill(weights, masks, g, per, apply=True, sources=sources)
        if recompute:
            self._backend.masks_written()
        self._commit(ratio, g, per)
        self.cur_iteration += 1
        self._recompute_next = False
        self._backend.after_apply()

    def update_threshold(self) -> None:
        """Ratio mode: recompute the threshold(s) from the current weights (masks unchanged)."""
        self._check_live()
        with self._work(write=False) as (_, weights, _masks):
            g, per = self._thresholds_for(weights, self.ratio, None)
        self._commit(self.ratio, g, per)

    def update_params(self) -> None:
        """Re-apply the current masks to the weights (before eval or save)."""
        self._check_live()
        self._masks_reset()
        with self._work() as (eng, weights, masks):
            eng.apply_masks(weights, masks)
        self._backend.after_apply()

    def set_static_masks(self) -> None:
        """Masks from the current zero pattern: fine-tune an already sparse model without changing it."""
        self._check_live()
        self._masks_reset()
        with self._work() as (eng, weights, masks):
            eng.masks_from_nonzero(weights, masks)
        self._backend.masks_written()

    def seek(self, iteration: int) -> None:
        """GMP: the next :meth:`step` runs at ``iteration`` and recomputes the masks (e.g. a resumed ``fit``)."""
        self._check_live()
        if self._schedule is None:
            raise TypeError("seek() needs a GMP pruner (a schedule); this pruner has none")
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be an int >= 0; got {iteration!r}")
        self.cur_iteration = iteration
        self.ratio = self._schedule.ratio_at(iteration - 1)
        self._recompute_next = True

    def summarize_weights(self, target: Any = None, ratio: float = 0.1) -> float:
        """|w| at sorted position ``max(0, ceil(ratio * N) - 1)`` over the prunable weights of ``target`` (default:
        this pruner's target and prunable parameters; another target is read with the default rule)."""
        ratio = check_ratio(ratio, allow_one=True)
        if target is not None and target is not self._backend.target:
            prunable, _ = resolve_prunable(self._backend.infos_of(target), None, None)
            return engine.summarize(self._backend.weights_of(target, [p.name for p in prunable]), ratio)
        self._check_live()
        with self._work(write=False) as (eng, weights, _):
            try:
                return eng.summarize(weights, ratio)
            except NonFiniteScoreError as exc:
                raise _named_nonfinite(eng, weights, exc, "summarize_weights cannot rank |w|") from exc

    def finalize(self) -> None:
        """Apply the masks for good and detach them from the target; the pruner refuses further calls and a new
        pruner may be built on the same target."""
        self.update_params()
        self._backend.detach()
        self._finalized = True

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The pruner's state for a checkpoint, like an optimizer's: schedule position, ratio, threshold(s), the
        configuration and a fingerprint of the kept weights (both checked on load, :mod:`.state`), and the masks in a
        compact form — rebuilt from the weights' zeros on load, so only a parameter whose mask is not exactly
        ``weight != 0`` (rare: a kept weight that is exactly 0) stores its mask, bit-packed.

        Save it next to the model's weights (``paddle.save(pruner.state_dict(), 'ckpt.pdpruner')``)."""
        self._check_live()
        self._masks_reset()
        key = self._backend.state_keys(self._prunable)
        with self._read_host() as (weights, masks):
            exact = {key[n]: pack_mask(masks[n]) for n in self._prunable
                     if not np.array_equal(masks[n], weights[n] != 0)}
            prints = fingerprints({key[n]: weights[n] for n in self._prunable},
                                  {key[n]: masks[n] for n in self._prunable})
        return {
            "version": STATE_VERSION, "mode": self.mode, "ratio": self.ratio, "threshold": self.threshold,
            "thresholds": {key[n]: t for n, t in self.thresholds.items()}, "iteration": self.cur_iteration,
            "prunable": [key[n] for n in self._prunable], "masks": exact, "config": self._config().record(),
            "fingerprint": prints,
        }

    def set_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` **after** the model's weights were loaded: masks (in force when it returns:
        every pruned weight is 0 before the next forward / ``exe.run``), threshold(s), ratio and the schedule
        position, so training resumes bit for bit. Every key, the configuration and the weights' fingerprint are
        checked (:func:`.state.parse_state`) before anything changes; weights that are not the ones the state was
        saved with (e.g. not loaded yet) are a ValueError."""
        self._check_live()
        key = self._backend.state_keys(self._prunable)
        shapes = {p.name: tuple(p.shape) for p in self._backend.param_infos()}
        parsed = parse_state(state, self._config(), {key[n]: shapes[n] for n in self._prunable})
        with self._read_host() as (weights, _):
            by_key = {key[n]: weights[n] for n in self._prunable}
            restored = restored_masks(parsed, by_key)
            check_fingerprints(parsed, by_key, restored)
        self._backend.masks_reset()  # a reset (static: startup re-run) is moot: every mask is replaced below
        with self._backend.open(self._prunable) as (weights, masks):
            for n in self._prunable:
                masks[n][...] = restored[key[n]]
            engine.apply_masks(weights, masks)
        self._backend.masks_written()
        name_of = {k: n for n, k in key.items()}
        self.ratio, self.threshold = parsed.ratio, parsed.threshold
        self.thresholds = {name_of[k]: t for k, t in parsed.thresholds.items()}
        self.cur_iteration = parsed.iteration
        self._recompute_next = False
        self._backend.store_thresholds(self.threshold, self.thresholds)
        self._backend.after_apply()

    def _config(self) -> Config:
        return Config(self.mode, self.target_ratio, self.local_sparsity, self.sparse_block, self.sparse_pattern,
                      self._schedule, "global" if self.local_sparsity else self.sparsity_allocation,
                      self.min_density)

    # -- internals ---------------------------------------------------------------------------------
    def _check_live(self) -> None:
        if self._finalized:
            raise RuntimeError("this pruner was finalize()d: its masks are gone; build a new pruner to prune again")

    def _masks_reset(self) -> bool:
        """Restore the masks if the backend lost them; True when it did."""
        if not self._backend.masks_reset():
            return False
        if self.mode == "threshold":
            self._masks_from_threshold(apply=True)
        else:
            self._backend.store_thresholds(self.threshold, self.thresholds)
            self._recompute_next = self._schedule is not None and self.cur_iteration > 0
        return True

    def _thresholds_for(
        self, weights: Arrays, ratio: float, sources: Optional[engine.Sources]
    ) -> Tuple[float, Dict[str, float]]:
        over = self._engine.max_abs_over_f32(weights, _F32_MAX)
        if over is not None:
            raise ValueError(f"weights of {over[0]!r} exceed the float32 range (max |w| = {over[1]!r}); "
                             "scores are compared in float32")
        try:
            g, per = self._allocate(weights, ratio, sources)
        except NonFiniteScoreError as exc:
            raise _named_nonfinite(self._engine, weights, exc, "ratio mode cannot place a threshold") from exc
        return (self.threshold if g is None else float(g)), {n: float(t) for n, t in per.items()}

    def _allocate(self, weights: Arrays, ratio: float, sources: Optional[engine.Sources]
                  ) -> Tuple[Optional[np.float32], Dict[str, np.float32]]:
        """Thresholds of the sparsity allocation (:mod:`.allocation`), no layer below its floor: per-layer prune
        counts for uniform / ERK / local_sparsity; for global, the global threshold, with the layers it would take
        below their floor pinned at their floor (their own thresholds) and the threshold re-chosen over the rest."""
        names = list(weights)
        sizes = {n: int(np.prod(self._shapes[n], dtype=np.int64)) for n in names}
        lows = dict(zip(names, allocation.floors([sizes[n] for n in names], self.min_density)))
        block, comm = self.sparse_block, self._collectives
        stats = self._pending_stats = SelectionStats()
        if self.local_sparsity or self.sparsity_allocation != "global":
            if self.local_sparsity:  # the seed's rule, each layer on its own, lifted to its floor
                counts = {n: min(prune_count(sizes[n], ratio), sizes[n] - lows[n]) for n in names}
            else:
                counts = dict(zip(names, allocation.prune_counts([self._shapes[n] for n in names], ratio,
                                                                 self.sparsity_allocation, self.min_density)))
            self._note_protected([n for n in names if counts[n] != prune_count(sizes[n], ratio)]
                                 if self.local_sparsity else [])
            return self._engine.ratio_thresholds(weights, ratio, True, block, sources, prune_counts=counts,
                                                 hint=self._local_hints, stats=stats)
        reduce = None if comm is None else (lambda v: [int(x) for x in comm.allreduce_sum(np.asarray(v, np.int64))])
        total = sum(sizes.values()) if reduce is None else reduce([sum(sizes.values())])[0]
        k_total = prune_count(total, ratio)
        if total - k_total < (sum(lows.values()) if reduce is None else reduce([sum(lows.values())])[0]):
            allocation.check_feasible(names, list(sizes.values()), ratio, self.min_density)  # raises (one rank)
            raise ValueError(f"min_density={self.min_density!r} keeps more weights (over all ranks) than "
                             f"ratio={ratio!r} leaves; lower min_density or the ratio")
        maxes: Dict[str, float] = {}
        g, _ = self._engine.ratio_thresholds(weights, ratio, False, block, sources, collectives=comm,
                                             max_scores=maxes, hint=self._hint, hint_width=self._hint_width,
                                             stats=stats)
        # a layer's floor score: the score it keeps its floor at; for a one-weight floor its largest score, which
        # the global selection read anyway; larger floors need the layer's own selection
        floor_scores: Dict[str, float] = {n: maxes[n] for n in names if lows[n] == 1 and n in maxes}
        floor_scores.update({n: math.inf for n in names if lows[n] == 0})
        rest = [n for n in names if n not in floor_scores]
        if rest:
            _, more = self._engine.ratio_thresholds(
                {n: weights[n] for n in rest}, ratio, True, block,
                None if sources is None else {n: sources[n] for n in rest},
                prune_counts={n: sizes[n] - lows[n] for n in rest}, stats=stats)
            floor_scores.update(more)
        if (reduce or (lambda v: v))([sum(1 for n in names if floor_scores[n] < g)])[0] == 0:
            self._note_protected([])
            return g, {}

        def select(free: List[str], k: int) -> float:
            n_free = sum(sizes[n] for n in free)
            n_free = n_free if reduce is None else reduce([n_free])[0]
            sub = {n: weights[n] for n in free}
            src = None if sources is None else {n: sources[n] for n in free}
            return self._engine.ratio_thresholds(sub, k / n_free, False, block, src, collectives=comm,
                                                 stats=stats)[0]

        g, pinned = allocation.protect_global(sizes, lows, floor_scores, k_total, select, reduce)
        self._note_protected(pinned)
        return g, {n: floor_scores[n] for n in pinned}

    def _note_protected(self, names: List[str]) -> None:
        """Remember the layers this selection kept at their floor (in force once the step commits), by name."""
        self._pending_protected = sorted(names)

    def _fill(self, weights: Arrays, masks: Arrays, threshold: float, thresholds: Mapping[str, float], apply: bool,
              sources: Optional[engine.Sources] = None) -> None:
        """masks = score >= threshold (and, with a sparse_pattern, the N:M mask of the same weights); apply: zero the
        pruned weights."""
        eng = self._engine
        if self.sparse_pattern is None:
            eng.fill_masks(weights, masks, threshold, thresholds, self.sparse_block, apply=apply, sources=sources)
            return
        eng.fill_masks(weights, masks, threshold, thresholds, self.sparse_block, apply=False, sources=sources)
        eng.fill_nm(weights, masks, *self.sparse_pattern, self._layouts)
        if apply:  # multiply, like every other path (and the static program's mask op): same bits, -0.0 included
            eng.apply_masks(weights, masks)

    def _commit(self, ratio: float, threshold: float, thresholds: Mapping[str, float]) -> None:
        names = self._pending_protected
        if names and names != self.protected_params:
            _log.warning("sparsity_allocation=%r at ratio %.4g would leave %d layer(s) below their floor of "
                         "max(1, ceil(min_density * n)) kept weights; kept at the floor: %s",
                         self.sparsity_allocation, ratio, len(names), names[:10])
        self.protected_params = list(names)
        self.ratio = ratio
        self.threshold = float(threshold)
        self.thresholds = dict(thresholds)
        self._backend.store_thresholds(self.threshold, self.thresholds)
        stats, self._pending_stats = self._pending_stats, None
        if stats is not None:  # a ratio selection ran: its thresholds warm-start the next one
            self.selection_stats = stats
            self._hint, self._hint_width = self.threshold, stats.next_width
            self._local_hints = dict(self.thresholds)

    @contextlib.contextmanager
    def _work(self, write: bool = True) -> Iterator[Tuple[engine.Engine, Any, Any]]:
        """(engine, weights, masks) of the prunable parameters from the backend (:meth:`Backend.work`; a backend
        without it gives host arrays for the numpy/C engine). Inside, ``self._engine`` is that engine. ``write``:
        False for calls that only read (host copies are not written back)."""
        work = getattr(self._backend, "work", None)
        with (work(self._prunable, write=write) if work is not None else _host_work(self._backend, self._prunable)
              ) as (eng, weights, masks):
            self._engine = eng
            try:
                yield eng, weights, masks
            finally:
                self._engine = engine.HOST

    @contextlib.contextmanager
    def _read_host(self) -> Iterator[Tuple[Arrays, Arrays]]:
        """Host arrays of the weights and masks to read (checkpoints): views on the CPU, copies from a device
        (bfloat16 widened to float32, as the numpy/C engine sees it); nothing is written back."""
        with self._work(write=False) as (eng, weights, masks):
            yield ({n: eng.to_host(w) for n, w in weights.items()}, {n: eng.to_host(m) for n, m in masks.items()})

    def _masks_from_threshold(self, apply: bool) -> None:
        with self._work() as (_, weights, masks):
            self._fill(weights, masks, self.threshold, {}, apply=apply)
        self._backend.masks_written()
        self._backend.store_thresholds(self.threshold, self.thresholds)
        if apply:
            self._backend.after_apply()


def _named_nonfinite(eng: engine.Engine, weights: Arrays, exc: NonFiniteScoreError, what: str
                     ) -> NonFiniteScoreError:
    """``exc`` (scores are |w|, so the selection sees -Inf as Inf) restated with the weight's name and what it holds:
    NaN, +Inf and/or -Inf (error path only: one host copy of that weight)."""
    bad = eng.first_nonfinite(weights)
    if bad is None:  # another rank's weights: the selection's message says so
        return exc
    try:
        w = np.asarray(eng.to_host(weights[bad]), dtype=np.float32)
        kinds = [k for k, hit in (("NaN", np.isnan(w).any()), ("+Inf", np.isposinf(w).any()),
                                  ("-Inf", np.isneginf(w).any())) if hit]
    except (TypeError, ValueError):  # a dtype numpy cannot widen: say what the selection saw
        kinds = []
    return NonFiniteScoreError(f"weights of {bad!r} contain {' and '.join(kinds) or 'NaN or Inf'}; {what} among "
                               "non-finite values")


@contextlib.contextmanager
def _host_work(backend: Backend, names: Sequence[str]) -> Iterator[Tuple[engine.Engine, Arrays, Arrays]]:
    with backend.open(names) as (weights, masks):
        yield engine.HOST, weights, masks

"""Drive a dygraph pruner from ``paddle.Model.fit`` (Paddle's high-level API).

:class:`PruningCallback` calls ``pruner.step()`` after every **optimizer** step of ``fit`` - with
``fit(accumulate_grad_batches=k)`` the optimizer steps on every k-th batch and on the last batch of an epoch, and
so does the pruner - and ``pruner.update_params()`` before evaluation, prediction and every checkpoint save. It
puts the pruner's current ratio (``prune_ratio``; ``prune_threshold`` in threshold mode) and the measured sparsity of
the prunable weights (``sparsity``) into ``fit``'s logs, so the progress bar shows them beside the loss.

A GMP pruner's iteration is the **global optimizer-step count** (0-based): the i-th optimizer step of the whole
training, across ``fit`` calls, runs the schedule at iteration i. The callback never moves a pruner back: by default
it continues from the pruner's own iteration (a pruner restored with ``set_state_dict`` or built with
``resume_iteration`` goes on from there); reuse the callback for a second ``fit`` and it continues; without a pruner
state, give ``global_step`` = the optimizer steps already taken (see :meth:`PruningCallback.steps_per_epoch`) and the
schedule continues exactly where it stopped. A finalized pruner, or a ``global_step`` behind the pruner's iteration,
is refused before training starts.

>>> import numpy as np, paddle
>>> from paddleslim_dygraph import GMPUnstructuredPruner
>>> from paddleslim_dygraph.hapi import PruningCallback
>>> net = paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Linear(16, 2))
>>> configs = {'stable_iterations': 0, 'pruning_iterations': 22, 'tunning_iterations': 2,
...            'resume_iteration': 0, 'pruning_steps': 2, 'initial_ratio': 0.3}
>>> pruner = GMPUnstructuredPruner(net, ratio=0.8, configs=configs)
>>> model = paddle.Model(net)
>>> model.prepare(paddle.optimizer.SGD(0.1, parameters=net.parameters()), paddle.nn.CrossEntropyLoss())
>>> x = np.random.rand(96, 8).astype('float32'); y = (x.sum(1, keepdims=True) > 4).astype('int64')
>>> data = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
>>> callback = PruningCallback(pruner)
>>> model.fit(data, batch_size=8, epochs=4, accumulate_grad_batches=2, verbose=0, callbacks=[callback])
>>> callback.global_step, pruner.ratio      # 4 epochs x 12 batches / 2 = 24 optimizer steps
(24, 0.8)
"""
from __future__ import annotations

import logging
from numbers import Integral
from typing import Any, Dict, Optional, Tuple

import paddle


from .layers import owned_params
from .pruner import UnstructuredPruner

__all__ = ["PruningCallback"]

_log = logging.getLogger(__name__)


class PruningCallback(paddle.callbacks.Callback):
    """``pruner.step()`` after each optimizer step of ``paddle.Model.fit``; ``update_params()`` before eval/save.

    Args:
        pruner: a :class:`paddleslim_dygraph.UnstructuredPruner` or ``GMPUnstructuredPruner`` built on the
            network of the ``paddle.Model`` (``paddle.Model(net)`` -> prune ``net``), or on one of its sublayers.
        global_step: optimizer steps already taken before the first ``fit`` this callback sees (resume without a
            pruner state). Default: the pruner's own iteration when training starts (0 for a fresh pruner). A GMP
            pruner behind it is moved forward (``pruner.seek``) before its first step; one ahead of it is refused
            (``ValueError``), never rewound.

    Under AMP O2 the fp32 master weights of ``fit``'s optimizer are masked with the weights
    (:meth:`~paddleslim_dygraph.UnstructuredPruner.mask_master_weights`).
    Under AMP (``prepare(amp_configs=...)``) a step the GradScaler skips because of inf/NaN gradients still counts
    as an optimizer step (hapi issues it; the weights simply do not move), so the count stays a function of the
    batch index and resuming needs no bookkeeping beyond ``global_step``.
    """

    def __init__(self, pruner: UnstructuredPruner, global_step: Optional[int] = None) -> None:
        super().__init__()
        if not isinstance(pruner, UnstructuredPruner):
            raise TypeError(
                f"pruner must be a paddleslim_dygraph UnstructuredPruner or GMPUnstructuredPruner; "
                f"got {type(pruner).__name__}"
            )
        if global_step is not None and (isinstance(global_step, bool) or not isinstance(global_step, Integral)
                                        or global_step < 0):
            raise ValueError(f"global_step must be None or an int >= 0; got {global_step!r}")
        self.pruner = pruner
        self._check_pruner(None if global_step is None else int(global_step))
        self._explicit = global_step is not None
        self.global_step = int(global_step) if global_step is not None else max(0, pruner.cur_iteration)
        self._batches: Optional[int] = None  # length of the training loader, None: unknown (k must be 1)
        self._accumulate = 1

    @staticmethod
    def steps_per_epoch(num_batches: int, accumulate_grad_batches: int = 1) -> int:
        """Optimizer steps hapi takes in one full epoch of ``num_batches``: ``ceil(num_batches / k)``.

        >>> PruningCallback.steps_per_epoch(10, 3)   # batches 3, 6, 9 and the last one
        4
        """
        for name, v in (("num_batches", num_batches), ("accumulate_grad_batches", accumulate_grad_batches)):
            if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
                raise ValueError(f"{name} must be an int >= 1; got {v!r}")
        return -(-int(num_batches) // int(accumulate_grad_batches))

    # -- training --------------------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Any = None) -> None:
        if not self._explicit:  # continue from the pruner's own iteration (e.g. set_state_dict after construction)
            self.global_step = max(self.global_step, self.pruner.cur_iteration)
        self._check_pruner(self.global_step)
        self._check_network()
        optimizer = getattr(self.model, "_optimizer", None)
        if isinstance(optimizer, paddle.optimizer.Optimizer):  # AMP O2: its fp32 master weights are masked too
            self.pruner.mask_master_weights(optimizer)
        k = getattr(self.model, "_accumulate", 1)
        self._accumulate = int(k) if isinstance(k, Integral) and k >= 1 else 1
        self._batches = self._loader_length()
        metrics = self.params.get("metrics")  # the names fit's progress bar prints (the same list object)
        if isinstance(metrics, list):
            metrics.extend(k for k in self._log_keys() if k not in metrics)
        if self._accumulate > 1 and not isinstance(self.params.get("steps"), Integral):
            _log.warning("training loader has no len(): hapi needs it with accumulate_grad_batches > 1")

    def _loader_length(self) -> Optional[int]:
        """len(train loader) for hapi's last-batch rule, from fit's callback params; None: the rule never fires.

        fit reports ``steps = len(loader)``, or ``min(num_iters, len(loader))`` when ``num_iters`` is given, in
        which case ``epochs = num_iters // len(loader) + 1``: when steps == num_iters, epochs >= 2 means
        len == num_iters, epochs == 1 means len > num_iters (the last batch is never reached in this fit).
        """
        steps = self.params.get("steps")
        if not isinstance(steps, Integral):
            return None
        num_iters = getattr(self.model, "num_iters", None)
        if isinstance(num_iters, Integral) and steps == num_iters and self.params.get("epochs", 2) < 2:
            return None
        return int(steps)

    def _is_update(self, step: int) -> bool:
        """hapi's rule (Model._run_one_epoch): the optimizer steps on batch ``step`` (0-based, per epoch)."""
        if (step + 1) % self._accumulate == 0:
            return True
        return self._batches is not None and step + 1 == self._batches

    def on_train_batch_end(self, step: int, logs: Any = None) -> None:
        if not self._is_update(step):
            return
        self._sync_iteration()
        self.pruner.step()
        self.global_step += 1
        if isinstance(logs, dict):  # fit reuses one dict per epoch: the bar's next line and the epoch line read it
            logs.update(self.log_values())

    def _log_keys(self) -> Tuple[str, str]:
        return ("prune_ratio" if self.pruner.mode == "ratio" else "prune_threshold", "sparsity")

    def log_values(self) -> Dict[str, float]:
        """What the callback adds to ``fit``'s logs: the pruner's current ratio (``prune_threshold`` in threshold
        mode) and the measured sparsity of its prunable weights (zeros / elements, read after the step)."""
        names = set(self.pruner.masks)
        params = [p for _, _, p in owned_params(self.pruner.model) if p.name in names]
        # counted where the weights live: one scalar crosses to the host per step, never the weights
        nonzero = int(paddle.add_n([paddle.count_nonzero(p).astype("int64") for p in params]).item())
        size = sum(int(p.size) for p in params)
        ratio_key, _ = self._log_keys()
        value = self.pruner.ratio if ratio_key == "prune_ratio" else self.pruner.threshold
        return {ratio_key: float(value), "sparsity": 1.0 - nonzero / size if size else 0.0}

    def _sync_iteration(self) -> None:
        """A GMP pruner runs its next step at iteration ``global_step`` (resume, or a pruner built with a
        different resume_iteration)."""
        if self.pruner.schedule is not None and self.pruner.cur_iteration != self.global_step:
            self._check_pruner(self.global_step)  # stepped behind the callback's back: refuse, never rewind
            _log.info("GMP pruner moved from iteration %d to the global step %d",
                      self.pruner.cur_iteration, self.global_step)
            self.pruner.seek(self.global_step)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.pruner.update_params()  # before ModelCheckpoint's save (it runs after user callbacks)

    def on_train_end(self, logs: Any = None) -> None:
        self.pruner.update_params()

    # -- evaluation / prediction -----------------------------------------------------------------------------------
    def on_eval_begin(self, logs: Any = None) -> None:
        self.pruner.update_params()

    def on_predict_begin(self, logs: Any = None) -> None:
        self.pruner.update_params()

    def _check_pruner(self, global_step: Optional[int]) -> None:
        """Refuse a finalized pruner and a GMP schedule position the callback would have to move back."""
        if self.pruner.finalized:
            raise ValueError("pruner was finalize()d: its masks are gone and it cannot step; build a new pruner "
                             "for the callback")
        it = self.pruner.cur_iteration
        if global_step is not None and self.pruner.schedule is not None and it > global_step:
            raise ValueError(
                f"global_step={global_step} is behind the GMP pruner's iteration {it}: the callback never rewinds "
                f"a pruner; omit global_step to continue from iteration {it}, or pass global_step >= {it}")

    def _check_network(self) -> None:
        network = getattr(self.model, "network", None)
        target = self.pruner.model
        if network is None:
            return
        if target is network or any(sub is target for sub in network.sublayers()):
            return
        raise ValueError(
            f"the pruner prunes {type(target).__name__} ({target.full_name()}), which is not the network of this "
            f"paddle.Model ({type(network).__name__}) nor one of its sublayers: build the pruner on paddle.Model's "
            "network"
        )

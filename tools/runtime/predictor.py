"""One call that makes a saved sparse CPU model usable: register the operator, then a ``paddle.inference`` predictor.

Without the operator registered, Paddle Inference fails with ``(PreconditionNotMet) op [] kernel output args (0)
defs should equal op outputs (1)``; :func:`create_predictor` checks the program for our operators first and, if
the library cannot be had, raises :class:`.loader.KernelsUnavailable` saying why and what to do.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List, Mapping, Union

from .loader import OPS, KernelsUnavailable, load_library

__all__ = ["create_predictor", "uses_sparse_ops", "explain_predictor_error", "predictor_runner"]

PathLike = Union[str, "os.PathLike[str]"]
_CRYPTIC = "kernel output args (0) defs should equal op outputs"


def uses_sparse_ops(model_file: PathLike) -> bool:
    """Whether a saved program (PIR ``.json`` or legacy ``.pdmodel``) calls the sparse operators."""
    data = Path(model_file).read_bytes()
    return any(op.encode() in data for op in OPS)


def explain_predictor_error(exc: BaseException, model_file: PathLike) -> str:
    """A one-line explanation for Paddle's error on a sparse model whose operator is not registered ('' if it is
    another error)."""
    if _CRYPTIC in str(exc) and uses_sparse_ops(model_file):
        return (f"{model_file} uses the sparse CPU operators ({', '.join(OPS)}), which are not registered in this "
                "process: load it with paddleslim_tools.runtime.create_predictor(model_file, params_file), or call "
                "paddleslim_tools.runtime.load_library() before paddle.inference.create_predictor")
    return ""


def create_predictor(model_file: PathLike, params_file: PathLike, threads: int = 1, *,
                     mkldnn: bool = True) -> Any:
    """A ``paddle.inference`` predictor for a model written by the ``sparse-cpu`` export (any other model too).

    ``threads`` is used by Paddle's dense operators and by the sparse ones. ``mkldnn`` enables oneDNN for the dense
    operators left in the model (the default; on this machine it was the faster choice around sparse layers).

    >>> import numpy as np, paddle, tempfile, os
    >>> from paddleslim_tools.runtime import SparseLinear, create_predictor
    >>> from paddleslim_tools.runtime.predictor import predictor_runner
    >>> lin = paddle.nn.Linear(16, 4)
    >>> net = paddle.nn.Sequential(SparseLinear.from_dense(lin))
    >>> d = tempfile.mkdtemp()
    >>> paddle.jit.save(net, os.path.join(d, "m"), [paddle.static.InputSpec([None, 16], "float32", "x")])
    >>> pred = create_predictor(os.path.join(d, "m.json"), os.path.join(d, "m.pdiparams"))
    >>> x = np.ones((2, 16), np.float32)
    >>> (y,) = predictor_runner(pred, {"x": x})()
    >>> bool(np.allclose(y, lin(paddle.to_tensor(x)).numpy(), rtol=1e-5, atol=1e-6))
    True
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1; got {threads!r}")
    for what, f in (("model_file", model_file), ("params_file", params_file)):
        if not Path(f).is_file():
            raise FileNotFoundError(f"{what} {str(f)!r} does not exist")
    import paddle.inference as paddle_infer

    if uses_sparse_ops(model_file):
        try:
            load_library()  # the operators follow this predictor's thread setting at run time
        except KernelsUnavailable as exc:
            raise KernelsUnavailable(f"{model_file} needs the sparse CPU operators, but {exc}") from None
    config = paddle_infer.Config(str(model_file), str(params_file))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    if mkldnn:
        config.enable_mkldnn()
    else:
        config.disable_mkldnn()
    config.disable_glog_info()
    try:
        return paddle_infer.create_predictor(config)
    except Exception as exc:  # Paddle raises RuntimeError/ValueError subclasses of its own
        why = explain_predictor_error(exc, model_file)
        if why:
            raise KernelsUnavailable(why) from None
        raise


def predictor_runner(predictor: Any, feeds: Mapping[str, Any]) -> Callable[[], List[Any]]:
    """A function that feeds ``feeds`` (numpy arrays, in the predictor's input order) and returns the outputs as
    numpy arrays: what timing loops and output checks call."""
    handles = [predictor.get_input_handle(n) for n in predictor.get_input_names()]
    outs = [predictor.get_output_handle(n) for n in predictor.get_output_names()]
    values = list(feeds.values())
    if len(values) != len(handles):
        raise ValueError(f"the predictor takes {len(handles)} inputs; got {len(values)} feeds")

    def run() -> List[Any]:
        for h, v in zip(handles, values):
            h.reshape(list(v.shape))
            h.copy_from_cpu(v)
        predictor.run()
        return [o.copy_to_cpu() for o in outs]
    return run

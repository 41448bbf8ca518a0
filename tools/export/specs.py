"""Input specs (``[name:]shape[:dtype]``) and the checks of the export options, done before anything is written."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, List, Optional, Sequence

import paddle

from ..errors import ExportError
from .layout import LEGACY_FILES, TARGETS, parse_targets, relpaths

__all__ = ["parse_input_spec", "check_input_spec", "ExportOptions", "TARGETS", "DEFAULT_OPSET",
           "parse_targets"]

DEFAULT_OPSET = 13
_DTYPES = ("float32", "float64", "float16", "int32", "int64", "bool", "uint8", "int8")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def parse_input_spec(text: str, index: int = 0) -> paddle.static.InputSpec:
    """``[name:]shape[:dtype]`` -> InputSpec; shape like ``1x3x32x32`` or ``-1,3,32,32`` (``?``/``-1`` = dynamic).

    >>> s = parse_input_spec("img:?x3x32x32:float32"); (s.name, list(s.shape), str(s.dtype))
    ('img', [-1, 3, 32, 32], 'paddle.float32')
    """
    if not isinstance(text, str):
        raise TypeError(f"input spec must be a str like 'x:1x3x32x32:float32'; got {text!r}")
    parts = text.split(":")
    name, dtype = f"x{index}" if index else "x", "float32"
    if len(parts) == 3:
        name, shape_s, dtype = parts
    elif len(parts) == 2:
        if parts[1] in _DTYPES:
            shape_s, dtype = parts
        else:
            name, shape_s = parts
    elif len(parts) == 1:
        shape_s = parts[0]
    else:
        raise ExportError(f"--input {text!r}: expected [name:]shape[:dtype], e.g. x:1x3x32x32:float32")
    if dtype not in _DTYPES:
        raise ExportError(f"--input {text!r}: unknown dtype {dtype!r} (one of {sorted(_DTYPES)})")
    dims: List[Optional[int]] = []
    for d in re.split(r"[x,]", shape_s.strip("[]()")):
        d = d.strip()
        if d in ("?", "-1", "None", "none"):
            dims.append(None)
        elif d.isdigit() and int(d) > 0:
            dims.append(int(d))
        else:
            raise ExportError(f"--input {text!r}: bad dimension {d!r} in shape {shape_s!r}")
    return paddle.static.InputSpec(dims, dtype, name or "x")


def check_input_spec(input_spec: Any) -> List[paddle.static.InputSpec]:
    if not isinstance(input_spec, (list, tuple)) or not input_spec:
        raise TypeError(f"input_spec must be a non-empty list of paddle.static.InputSpec; got {input_spec!r}")
    for s in input_spec:
        if not isinstance(s, paddle.static.InputSpec):
            raise TypeError(f"input_spec items must be paddle.static.InputSpec; got {s!r}")
    return list(input_spec)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What every export takes besides its source (validated on construction).

    ``sparse_cutoff``: store weights with density <= this sparse (None: whenever COO is smaller);
    ``onnx_transform``: applied to the converted ``onnx.ModelProto`` before it is saved and verified;
    ``target``: ``"onnx"`` (Paddle model + ONNX + compressed ONNX), ``"lite"`` (Paddle model + a legacy-IR
    ``lite/NAME.pdmodel`` for Paddle Lite's opt), ``"sparse-cpu"`` (Paddle model + ``sparse-cpu/NAME.json``, its
    pruned layers on the sparse CPU operators, written when measured faster), a comma-separated combination
    (``"onnx,sparse-cpu"``) or ``"all"``;
    ``nm_pattern``: ``'2:4'`` makes verification also require every qualifying weight to be N:M sparse.
    """

    name: str = "model"
    opset: int = DEFAULT_OPSET
    compress: bool = True
    verify: bool = True
    sparse_cutoff: Optional[float] = None
    seed: int = 0
    rtol: float = 1e-5
    onnx_transform: Optional[Callable[[Any], Any]] = None
    target: str = "onnx"
    sparse_threshold: float = 0.6  # Paddle Lite opt's --sparse_threshold, for the printed command
    nm_pattern: Optional[str] = None  # 'N:M': verify every qualifying weight of the saved model is N:M sparse

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ExportError(f"name must be a plain file name (letters, digits, _ . -); got {self.name!r}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not 7 <= self.opset <= 21:
            raise ExportError(f"opset must be an int in [7, 21]; got {self.opset!r}")
        cut = self.sparse_cutoff
        if cut is not None and (isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0 <= cut <= 1):
            raise ExportError(f"sparse_cutoff must be a density in [0, 1] or None; got {cut!r}")
        parse_targets(self.target)
        thr = self.sparse_threshold
        if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 <= thr <= 1:
            raise ExportError(f"sparse_threshold must be in [0, 1]; got {thr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int; got {self.seed!r}")
        if isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float)) or not self.rtol >= 0:
            raise ExportError(f"rtol must be a number >= 0; got {self.rtol!r}")
        if self.nm_pattern is not None:
            from paddleslim_static.core.nm import parse_pattern

            try:
                parse_pattern(self.nm_pattern, "nm_pattern")
            except (TypeError, ValueError) as e:
                raise ExportError(str(e)) from None
        if self.onnx_transform is not None and not callable(self.onnx_transform):
            raise TypeError(f"onnx_transform must be callable or None; got {self.onnx_transform!r}")

    @property
    def onnx(self) -> bool:
        return "onnx" in parse_targets(self.target)

    @property
    def lite(self) -> bool:
        return "lite" in parse_targets(self.target)

    @property
    def sparse_cpu(self) -> bool:
        return "sparse-cpu" in parse_targets(self.target)

    @property
    def outputs(self) -> Sequence[str]:
        """Every file (relative to ``out_dir``) an export under ``name`` may write, and the ones earlier versions
        wrote next to the model: re-exporting removes those it does not write (see :mod:`.layout`)."""

        return relpaths(self.name, "all") + [self.name + s for s in LEGACY_FILES]

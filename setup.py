"""Unstructured sparsity for PaddlePaddle 3 (static Program pass + dygraph pruners + export tool)."""
import importlib.util
import logging
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExtWithSparseOps(build_ext):
    """The C kernels, then the sparse CPU operator library (paddleslim_tools/runtime/_lib), built against the Paddle
    of the build environment (pyproject.toml lists it). Optional like the C kernels: without a compiler or Paddle the
    package still installs, and the runtime builds the library at first use (or says why it cannot)."""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        dest = os.path.join(here if self.inplace else self.build_lib, "paddleslim_tools" if not self.inplace else
                            "tools", "runtime", "_lib")
        spec = importlib.util.spec_from_file_location("_psl_build", os.path.join(here, "tools", "runtime", "build.py"))
        build = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(build)
            import paddle  # noqa: F401

            build.build_library(dest)
        except Exception as exc:  # optional: never fail the install over it
            logging.getLogger("setup").warning("sparse CPU operators not built now (%s); they will be built at "
                                               "first use if a compiler is available", exc)

setup(
    name="paddleslim-sparsity",
    version="0.2.0",
    description="Unstructured (magnitude) sparsity for PaddlePaddle 3: static PIR pass, dygraph pruners, "
    "sparse ONNX export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["paddleslim_static", "paddleslim_static.core", "paddleslim_dygraph", "paddleslim_tools",
              "paddleslim_tools.export", "paddleslim_tools.report", "paddleslim_tools.demo",
              "paddleslim_tools.runtime"],
    package_dir={"paddleslim_tools": "tools"},
    package_data={"paddleslim_tools": ["data/*.npz", "runtime/csrc/*"], "paddleslim_static": ["py.typed"],
                  "paddleslim_dygraph": ["py.typed"]},
    # Optional C kernels for the core's two streaming passes; without a compiler the numpy code runs instead.
    ext_modules=[
        Extension(
            "paddleslim_static.core._kernels",
            ["paddleslim_static/core/_kernels.c"],
            extra_compile_args=["-O3"] if sys.platform != "win32" else ["/O2"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExtWithSparseOps},
    install_requires=["paddlepaddle>=3.0", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis", "onnx", "paddle2onnx", "onnxruntime", "matplotlib",
                 "wheel"],  # wheel: the no-compiler install test builds without isolation
        "export": ["onnx", "paddle2onnx", "onnxruntime"],
        "plot": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "paddleslim-demo=paddleslim_tools.demo:main",
            "paddleslim-export=paddleslim_tools.export:main",
            "paddleslim-report=paddleslim_tools.report:main",
        ]
    },
    license="Apache-2.0",
)

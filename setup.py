"""Unstructured sparsity for PaddlePaddle 3 (static Program pass + dygraph pruners + export tool)."""
import sys

from setuptools import Extension, setup

setup(
    name="paddleslim-sparsity",
    version="0.2.0",
    description="Unstructured (magnitude) sparsity for PaddlePaddle 3: static PIR pass, dygraph pruners, "
    "sparse ONNX export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["paddleslim_static", "paddleslim_static.core", "paddleslim_dygraph", "paddleslim_tools",
              "paddleslim_tools.export"],
    package_dir={"paddleslim_tools": "tools"},
    package_data={"paddleslim_tools": ["data/*.npz"], "paddleslim_static": ["py.typed"],
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
    install_requires=["paddlepaddle>=3.0", "numpy"],
    extras_require={
        "test": ["pytest", "hypothesis", "onnx", "paddle2onnx", "onnxruntime", "matplotlib"],
        "export": ["onnx", "paddle2onnx", "onnxruntime"],
        "plot": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "paddleslim-demo=paddleslim_tools.demo:main",
            "paddleslim-export=paddleslim_tools.export:main",
            "paddleslim-report=paddleslim_tools.report_cmd:main",
        ]
    },
    license="Apache-2.0",
)

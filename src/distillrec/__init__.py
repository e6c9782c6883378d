"""distillrec: distil LLM recommenders into small sequential recommenders, as a DVC pipeline.

Importing the package pins the instruction set of torch's CPU kernels to AVX2 on x86-64, before
torch loads: ATen's vectorised kernels (ATEN_CPU_CAPABILITY), MKL's GEMM (MKL_CBWR, MKL's
conditional numerical reproducibility) and oneDNN (ONEDNN_MAX_CPU_ISA) each pick a code path per
CPU, and each alone changed a default student's trained weights on an AVX-512 machine. Pinned,
every x86-64 CPU with AVX2 (2013 on) runs the same code paths, so a fresh clone reproduces the
committed outputs on another machine (same torch and thread count); it cost ~8 % of a CPU training
run here. Set any of the three yourself (e.g. ATEN_CPU_CAPABILITY=avx512) to choose otherwise.
"""

import importlib
import os
import platform

if platform.machine().lower() in ("x86_64", "amd64"):
    for _name, _value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_CBWR", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
        os.environ.setdefault(_name, _value)

__version__ = "0.1.0"



def __getattr__(name):
    """`distillrec.load(folder)`: a released or saved student, ready to `.recommend(histories)`
    (distillrec/serving/recommender.py). Resolved on first use (PEP 562), so `import distillrec`
    stays light and the pipeline's stages, which never serve, never import the serving code."""
    if name == "load":
        return importlib.import_module("distillrec.serving.recommender").load
    raise AttributeError(f"module 'distillrec' has no attribute {name!r}")

"""Build shallowkern._C with torch's BuildExtension (ninja).

* CPU torch            -> CppExtension: csrc/*.cpp + csrc/cpu/*.cpp (C++ CPU kernels, OpenMP).
* CUDA torch + nvcc    -> CUDAExtension: the same plus csrc/cuda/*.cu (torch-free kernels and the
                          thin binding csrc/cuda/bindings.cu).
* SHALLOWKERN_NO_EXT=1 -> pure Python (Triton kernels + references only).

MAX_JOBS is honoured by torch's ninja build; SHALLOWKERN_CUDA_ARCH overrides the CUDA targets
(default: sm_90a, the Hopper target the kernels are tuned for, plus PTX for newer parts).
"""

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("SHALLOWKERN_NO_EXT", "0") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is the one torch builds with
    with_cuda = (
        torch.version.cuda is not None
        and (CUDA_HOME is not None or shutil.which("nvcc"))
        and os.environ.get("SHALLOWKERN_NO_CUDA", "0") != "1"
    )
    if with_cuda:
        arch = os.environ.get("SHALLOWKERN_CUDA_ARCH", "90a")
        # no --use_fast_math: it flushes denormals, and results must match the fp32 reference
        nvcc = ["-O3", "-lineinfo",
                f"-gencode=arch=compute_{arch},code=sm_{arch}",
                f"-gencode=arch=compute_{arch.rstrip('a')},code=compute_{arch.rstrip('a')}"]
        ext = CUDAExtension(
            "shallowkern._C",
            sources + rel("csrc/cuda/*.cu"),
            include_dirs=include_dirs,
            define_macros=[("SHALLOWKERN_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "shallowkern._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        def finalize_options(self):
            super().finalize_options()
            # PEP 660 editable installs (`pip install -e .`) build in a fresh temporary
            # directory each time, so every reinstall recompiled all of csrc/ (~2 min on an idle
            # 2-core machine); a fixed one lets ninja rebuild only what changed (it tracks the
            # headers and the compile commands).
            self.build_temp = os.path.join(ROOT, "build", "temp")

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

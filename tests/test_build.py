"""Build checks that need no GPU: every csrc/cuda/*.cu compiles with nvcc for sm_90a.

The torch-free kernels compile on their own; the thin binding (bindings.cu) compiles against the
installed torch's headers (the CPU wheel ships the c10/cuda and ATen/cuda headers it needs), as an
object only: linking needs a CUDA torch, which the GPU machine has.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") or (str(Path(home, "bin", "nvcc")) if Path(home, "bin", "nvcc").exists() else None)


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cuda_source_compiles_for_sm90a(source, tmp_path):
    cmd = [_nvcc(), "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-c", str(source),
           "-o", str(tmp_path / "out.o"), "-I", str(ROOT / "csrc" / "include"), "-I", str(ROOT / "csrc")]
    if source.name == "bindings.cu":
        cmd += [f"-I{p}" for p in cpp.include_paths()]
        cmd += ["-DSHALLOWKERN_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C", "-D_GLIBCXX_USE_CXX11_ABI=1",
                "--expt-relaxed-constexpr", "-Xcudafe", "--diag_suppress=20012"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{result.stderr[-4000:]}"


def test_there_are_cuda_sources():
    assert any(p.name == "wide_conv2d.cu" for p in CU_FILES)

"""Build of pyhypersphere and its compiled operators (pyhypersphere._C).

Backend selection, by the environment variable PYHYPERSPHERE_CUDA:
  auto (default)  CUDA kernels when torch was built with CUDA and nvcc is found, else CPU only
  0               CPU only, even where CUDA is available
  1               CUDA kernels; fail if torch has no CUDA or nvcc is missing
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: 8.0 and 9.0, i.e. A100 and H100).
Build against the installed torch: `pip install --no-build-isolation -e .`
"""

import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"


def want_cuda() -> bool:
    choice = os.environ.get("PYHYPERSPHERE_CUDA", "auto").strip().lower()
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if choice in ("0", "cpu", "off", "false"):
        return False
    if choice in ("1", "cuda", "on", "true"):
        if not available:
            raise RuntimeError(
                "PYHYPERSPHERE_CUDA=1 but CUDA cannot be built here: torch.version.cuda="
                f"{torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}"
            )
        return True
    if choice != "auto":
        raise RuntimeError(f"PYHYPERSPHERE_CUDA must be auto, 0 or 1, got {choice!r}")
    return available


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    with_cuda = want_cuda()
    srcs = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    defines = [("PYHYPERSPHERE_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fvisibility=hidden"]
    extra = {"cxx": cxx}
    if with_cuda:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        srcs += sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
        defines += [
            ("PYHYPERSPHERE_WITH_CUDA", None),
            ("PYHYPERSPHERE_CUDA_ARCH_LIST", f'"{arch_list}"'),
        ]
        extra["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        cls = cpp_extension.CUDAExtension
    else:
        cls = cpp_extension.CppExtension
    return cls(
        name="pyhypersphere._C",
        sources=srcs,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=defines,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    name="pyhypersphere",
    version="0.1.0",
    description="Fused, O(N*d)-memory alignment and uniformity losses (Wang & Isola, ICML 2020) for PyTorch",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["pyhypersphere", "pyhypersphere.*"]),
    package_data={"pyhypersphere.sweep": ["grids/*.json"]},  # the shipped study grids
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "pytest-benchmark", "triton>=3.4"],
        "bench": ["pykeops", "matplotlib"],
        "train": ["mnist1d", "scikit-learn", "matplotlib"],
    },
    entry_points={"console_scripts": ["pyhypersphere=pyhypersphere.cli:main"]},
    zip_safe=False,
)

"""The GPU check's first part (benchmarks/gpu_check.sh): the GPU, the library versions, and every module the other
parts import, each missing one named, so that one short run tells what the wheelhouse lacks (the GPU machine starts
bare and reaches no registry). Exit status 1 when there is no CUDA GPU or a module is missing.

    python benchmarks/gpu_check_preflight.py
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

# what tests/test_gpu*.py and benchmarks/train_throughput.py import, theirs and ours
MODULES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "safetensors", "sklearn",
           "matplotlib", "yaml", "PIL", "pytest", "hypothesis",
           "medtune.train", "medtune.trainer", "medtune.evaluation", "medtune.inference", "medtune.encoder",
           "medtune.export", "data_prep.crc100k", "data_prep.medqa"]
VERSIONS = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "pytest"]


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def main() -> int:
    sys.path.insert(0, os.getcwd())  # medtune and data_prep from the checkout, as the tests import them
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # any import failure (a missing dependency of a dependency too) is what this reports
            missing.append(f"{name} ({type(e).__name__}: {e})")
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0)
        print(f"gpu: {gpu.name}, {gpu.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
              f"{torch.cuda.device_count()} device(s), {os.cpu_count()} CPU cores")
    else:
        print("gpu: none visible to torch")
    print(f"versions: python {platform.python_version()}, " + ", ".join(f"{p} {version(p)}" for p in VERSIONS))
    if missing:
        print("missing: " + "; ".join(missing))
    return 0 if torch.cuda.is_available() and not missing else 1


if __name__ == "__main__":
    sys.exit(main())

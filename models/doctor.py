"""What this machine offers the model backends, and what each backend would pick.

`report()` never fails: a missing optional package is reported as missing, not raised.
`lookfirst doctor` prints it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Any


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version(module)
    except PackageNotFoundError:
        return None


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"installed": False}
    available = ort.get_available_providers()
    from models.classifier.onnx_scorer import default_providers

    return {
        "installed": True,
        "version": ort.__version__,
        "device": ort.get_device(),
        "providers_available": available,
        "providers_selected": default_providers(),
    }


def _torch() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False, "hint": "pip install '.[torch]' to train and export"}
    import torch

    info: dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "torchvision": _version("torchvision"),
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_build": torch.version.cuda,
        "devices": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
            })
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
        info["selected"] = {"device": "cuda:0",
                            "precision": "bf16" if torch.cuda.is_bf16_supported() else "fp16",
                            "jpeg_decode": "torchvision.io.decode_jpeg on the GPU (nvJPEG)"}
    else:
        info["selected"] = {"device": "cpu", "precision": "fp32",
                            "jpeg_decode": "CPU (Pillow); serve with onnxruntime on CPU"}
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps and mps.is_available())
    return info


def report() -> dict[str, Any]:
    ort_info = _onnxruntime()
    torch_info = _torch()
    serving = "onnxruntime " + ("CUDA" if "CUDAExecutionProvider"
                                in ort_info.get("providers_selected", []) else "CPU")
    batch = "torch CUDA" if torch_info.get("cuda_available") else serving
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort_info,
        "torch": torch_info,
        "optional": {
            "onnx": _version("onnx"),
            "onnxscript": _version("onnxscript"),
            "openvino": _version("openvino"),
            "onnxruntime-gpu": _version("onnxruntime-gpu"),
            "matplotlib": _version("matplotlib"),
        },
        "selected": {"serving": serving, "batch_jobs": batch},
    }

"""What llama.cpp itself can use: ggml's backend devices, through ctypes.

llama-cpp-python 0.3.36 does not bind `ggml_backend_dev_*`, so we bind the four functions we
need on the libggml it bundles (or the one in LLAMA_CPP_LIB_PATH, next to the libllama it
loads). This is the only source for Metal's free memory (the recommended working set minus
allocations) and agrees with what llama.cpp will actually allocate on CUDA. GPUs are
numbered in ggml's order, which is the order llama.cpp's `main_gpu` uses.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import sys
import threading

from .devices import Device, DeviceKind

# enum ggml_backend_dev_type (ggml-backend.h)
DEV_TYPE_CPU, DEV_TYPE_GPU, DEV_TYPE_IGPU, DEV_TYPE_ACCEL, DEV_TYPE_META = range(5)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _libggml() -> ctypes.CDLL | None:
    """The libggml that llama_cpp uses, with our signatures set; None if unavailable."""
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        try:
            import llama_cpp  # loads libllama and, through it, libggml and the backends

            llama_cpp.llama_backend_init()
            lib_dir = os.environ.get("LLAMA_CPP_LIB_PATH")
            if lib_dir:
                from llama_cpp._ctypes_extensions import load_shared_library

                lib = load_shared_library("ggml", pathlib.Path(lib_dir))
            else:
                from llama_cpp._ggml import libggml as lib
        except Exception:
            return None
        try:
            lib.ggml_backend_dev_count.argtypes = []
            lib.ggml_backend_dev_count.restype = ctypes.c_size_t
            lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
            lib.ggml_backend_dev_get.restype = ctypes.c_void_p
            lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
            lib.ggml_backend_dev_type.restype = ctypes.c_int
            lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
            lib.ggml_backend_dev_name.restype = ctypes.c_char_p
            lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
            lib.ggml_backend_dev_description.restype = ctypes.c_char_p
            lib.ggml_backend_dev_memory.argtypes = [
                ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_size_t),
                ctypes.POINTER(ctypes.c_size_t),
            ]
            lib.ggml_backend_dev_memory.restype = None
        except AttributeError:  # a libggml too old to have the device API
            return None
        _lib = lib
        return _lib


def device_memory(lib: ctypes.CDLL, dev: int) -> tuple[int, int]:
    """(free, total) bytes of one ggml_backend_dev_t, read now."""
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def device_handles(lib: ctypes.CDLL) -> list[int]:
    """Every ggml_backend_dev_t this process knows, in ggml's order."""
    return [int(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]


def backend_devices() -> list[tuple[int, str, str, int, int]]:
    """Every ggml device: (type, name, description, free, total). [] without llama_cpp."""
    lib = _libggml()
    if lib is None:
        return []
    out = []
    for dev in device_handles(lib):
        free, total = device_memory(lib, dev)
        out.append(
            (
                int(lib.ggml_backend_dev_type(dev)),
                (lib.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                free,
                total,
            )
        )
    return out


def _kind(name: str) -> DeviceKind:
    if name.upper().startswith("MTL") or sys.platform == "darwin":
        return "metal"
    return "cuda"


class GgmlHardware:
    """The GPUs llama.cpp was built for and can see (dedicated or integrated)."""

    def devices(self) -> list[Device]:
        gpus = [d for d in backend_devices() if d[0] in (DEV_TYPE_GPU, DEV_TYPE_IGPU)]
        return [
            Device(i, _kind(name), desc or name, total, free)
            for i, (_, name, desc, free, total) in enumerate(gpus)
        ]

    def backend(self) -> str:
        """"cuda", "metal" or "cpu": what this llama-cpp-python build offloads to (for doctor)."""
        gpus = self.devices()
        return gpus[0].kind if gpus else "cpu"

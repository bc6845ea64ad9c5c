"""Whether the installed llama.cpp can put work on a GPU, and what to do when it cannot.

llama.cpp quietly runs on the CPU when asked for GPU layers it cannot place: a line PC whose
llama-cpp-python was installed from the plain sdist (CPU only), or whose service cannot open the
GPU's device nodes, would be many times slower than planned without a word. The appliance refuses
to start instead, with this module's reason. Two cases differ in their fix: a build without any GPU
backend (rebuild llama-cpp-python with CUDA or Vulkan), and a GPU backend that sees no device (the
driver, or the systemd unit's device policy: `adfm-appliance install` opens the GPU's device nodes
when the station config asks for the GPU).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Literal

#: llama.cpp backends that never hold a GPU device.
HOST_BACKENDS = frozenset({"CPU", "BLAS"})
#: The CMake switch of each GPU build of llama.cpp documented for line PCs.
GPU_BUILD_FLAGS = {"cuda": "-DGGML_CUDA=on", "vulkan": "-DGGML_VULKAN=on"}


@dataclass(frozen=True)
class LlamaBackend:
    """One backend compiled into llama.cpp (CPU, CUDA, Vulkan …) and how many devices it found."""

    name: str
    devices: int


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        return "0.3.36"


def install_command(kind: Literal["cuda", "vulkan"] = "cuda", python: str | None = None) -> str:
    """The pip command that rebuilds this environment's llama-cpp-python (same version) for a GPU.

    `--no-binary` and `--no-cache-dir` keep pip from reinstalling a cached CPU-only wheel;
    `--no-deps` leaves the other packages as they are.
    """
    return (
        f'CMAKE_ARGS="{GPU_BUILD_FLAGS[kind]}" {python or sys.executable} -m pip install --force-reinstall '
        f"--no-deps --no-cache-dir --no-binary llama-cpp-python llama-cpp-python=={llama_cpp_version()}"
    )


def llama_backends() -> list[LlamaBackend] | None:
    """The backends registered in the loaded llama.cpp (ggml's backend registry); None if unreadable."""
    try:
        import llama_cpp.llama_cpp as lowlevel

        lib = ctypes.CDLL(lowlevel._lib._name)  # own function objects: the binding's stay untouched
        count = lib.ggml_backend_reg_count
        get = lib.ggml_backend_reg_get
        name = lib.ggml_backend_reg_name
        devs = lib.ggml_backend_reg_dev_count
    except (ImportError, AttributeError, OSError):
        return None
    count.restype, count.argtypes = ctypes.c_size_t, []
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    devs.restype, devs.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    out = []
    for i in range(count()):
        reg = get(i)
        out.append(LlamaBackend((name(reg) or b"?").decode("utf-8", "replace"), int(devs(reg))))
    return out


def describe_backends(backends: list[LlamaBackend] | None) -> str:
    if backends is None:
        return "unknown"
    return ", ".join(f"{b.name} ({b.devices} device{'s' if b.devices != 1 else ''})" for b in backends) or "none"


def gpu_offload_problem() -> str | None:
    """None when llama.cpp can offload to a GPU here; otherwise why not and how to fix it (a clause
    that follows "…, but")."""
    try:
        import llama_cpp
    except ImportError as exc:
        return f"llama-cpp-python is not installed ({exc}); install a GPU build: {install_command()}"
    if llama_cpp.llama_supports_gpu_offload():
        return None
    backends = llama_backends()
    idle = [b.name for b in backends or [] if b.name not in HOST_BACKENDS and b.devices == 0]
    version = llama_cpp_version()
    if idle:
        return (
            f"llama-cpp-python {version} was built with {' and '.join(idle)} and sees no GPU device "
            f"(llama.cpp backends: {describe_backends(backends)}): check the driver (`nvidia-smi`, or "
            "`vulkaninfo --summary`) and, under systemd, that the unit may open the GPU's device nodes — "
            "`adfm-appliance install` writes adfm-appliance.service.d/gpu.conf when the station config asks "
            "for the GPU; then `systemctl daemon-reload` and restart the service"
        )
    return (
        f"the installed llama-cpp-python {version} was built without GPU support (llama.cpp backends: "
        f"{describe_backends(backends)}); rebuild it for the GPU with `{install_command('cuda')}` "
        f"(Vulkan: CMAKE_ARGS=\"{GPU_BUILD_FLAGS['vulkan']}\"; README \"Line PCs with a GPU\")"
    )

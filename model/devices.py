"""What this process trains on under the current Keras backend, and the per-device choices that follow.

XLA (`jit_compile`) pays off on GPUs but not for TensorFlow on CPUs, and bfloat16
pays off on GPUs and for TensorFlow on CPUs with AMX or AVX-512 bfloat16 units (the README's
Performance section has the figures), so `TrainConfig`'s "auto" settings resolve here.
TensorFlow and JAX describe their devices differently; nothing outside this
module needs to know how.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import NamedTuple

import keras

AUTO = "auto"
# bfloat16 tensor cores arrived with Ampere (compute capability 8.0).
BFLOAT16_COMPUTE_CAPABILITY = (8, 0)
# /proc/cpuinfo flags of the bfloat16 units oneDNN uses for TensorFlow's bfloat16 matmuls and
# convolutions, on CPUs where the baseline step was measured faster in bfloat16 (README):
# Intel's AMX tiles (a Sapphire Rapids Xeon) and AVX-512 BF16 (an AMD EPYC without AMX).
CPU_BFLOAT16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


class Gpu(NamedTuple):
    name: str
    compute_capability: tuple[int, int] | None


def _capability(value) -> tuple[int, int] | None:
    """TensorFlow gives (9, 0), JAX gives '9.0'; None when the backend does not say."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(".")
    try:
        major, minor = (int(part) for part in tuple(value)[:2])
    except (TypeError, ValueError):
        return None
    return major, minor


@functools.cache
def gpus() -> tuple[Gpu, ...]:
    """The GPUs the current backend can use (cached: a process runs one backend)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = []
        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device)
            found.append(Gpu(details.get("device_name", device.name), _capability(details.get("compute_capability"))))
        return tuple(found)
    if backend == "jax":
        import jax

        return tuple(
            Gpu(device.device_kind, _capability(getattr(device, "compute_capability", None)))
            for device in jax.devices()
            if device.platform == "gpu"
        )
    return ()


def resolve_jit_compile(setting: bool | str) -> bool:
    """`True`/`False` as given; "auto" is XLA on GPUs and off on CPUs, except under JAX.

    On CPU the TensorFlow graph runs faster than its XLA build, and the 20-40 s
    compile never pays off. JAX has no graph mode: without jit it runs op by op,
    so "auto" always compiles there.
    """
    if setting != AUTO:
        return bool(setting)
    if keras.backend.backend() == "jax":
        return True
    return bool(gpus())


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (its first `flags` line); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_mixed_precision(setting: bool | str) -> bool:
    """`True`/`False` as given; "auto" is bfloat16 where the devices have bfloat16 units.

    That is every visible GPU from Ampere on or, without GPUs, a CPU with AMX or
    AVX-512 bfloat16 units under TensorFlow, whose oneDNN kernels use them (faster
    than float32 for the baseline step, README). XLA's CPU build of the JAX step was
    measured no faster in bfloat16, so JAX on a CPU stays float32.
    """
    if setting != AUTO:
        return bool(setting)
    found = gpus()
    if not found:
        return keras.backend.backend() == "tensorflow" and bool(CPU_BFLOAT16_FLAGS & cpu_flags())
    return all(
        gpu.compute_capability is not None and gpu.compute_capability >= BFLOAT16_COMPUTE_CAPABILITY for gpu in found
    )


def allow_gpu_memory_growth() -> None:
    """Packed trials (fractional GPUs) must not each grab the whole card.

    Call it before the first model is built. TensorFlow is told per device; JAX
    reads XLA_PYTHON_CLIENT_PREALLOCATE when it starts, so for Ray workers the
    study sets it in their environment, and here it only helps a process whose
    JAX has not started yet.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                return  # devices already initialised: a reused trial actor set this in its first trial
    elif keras.backend.backend() == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """e.g. 'jax on NVIDIA H100 80GB HBM3 x1 + Intel(R) Xeon(R) Processor x16 CPUs'."""
    cpu = f"{cpu_name()} x{os.cpu_count()} CPUs"
    names = [gpu.name for gpu in gpus()]
    if names:
        cpu = f"{names[0]} x{len(names)} + {cpu}"
    return f"{keras.backend.backend()} on {cpu}"


def system_figures() -> dict[str, float]:
    """This process's resource figures for the run's system metrics: host RSS peak and, on GPUs,
    device memory peak and utilisation (where the backend or nvidia-smi tells)."""
    import resource
    import shutil
    import subprocess

    figures = {"host_rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if not gpus():
        return figures
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        figures["device_memory_peak_mb"] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    else:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            figures["device_memory_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    if shutil.which("nvidia-smi"):
        # nvidia-smi numbers cards physically; CUDA_VISIBLE_DEVICES (set by Ray) names this trial's.
        card = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--id={card}"]
        try:
            output = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
            figures["gpu_utilization_percent"] = float(output.split()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return figures

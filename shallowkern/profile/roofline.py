"""Device peaks for the roofline: a table measured here, or a quick measurement, or the user's.

The time floor of a run is ``max(FLOPs / peak FLOP/s, bytes / bandwidth)``; a run at the floor
is at 100 % of the roofline. Peaks depend on the dtype (tensor cores for bf16/fp16).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

MEASURED = "measured on this workplace's machines, 2026-11"
DATASHEET = "NVIDIA datasheet (SXM part), not measured here"

# name fragment (as in torch.cuda.get_device_name) -> copy bandwidth (B/s) and peak FLOP/s by
# dtype, each with its source. bf16: a dense tensor-core matmul (8192^3, random data) and the
# copy bandwidth (device-to-device, read + write) as measured here; fp32 (TF32 off, CUDA cores)
# has not been measured here, so it is the datasheet's 67 TFLOP/s. On the device itself,
# ``measure`` is the better source.
KNOWN_DEVICES: dict[str, dict] = {
    "H100": {"bytes_per_s": 3.0e12,
             "flops_per_s": {"bfloat16": (798e12, MEASURED), "float32": (67e12, DATASHEET)}},
    "H200": {"bytes_per_s": 4.3e12,
             "flops_per_s": {"bfloat16": (788e12, MEASURED), "float32": (67e12, DATASHEET)}},
}


@dataclass
class Roofline:
    """Peak compute and bandwidth of a device for one dtype.

    Args:
        flops_per_s: peak FLOP/s (2 FLOPs per multiply-add). bytes_per_s: memory bandwidth.
        name: the device. dtype: the dtype the peak holds for. source: where the numbers come from.
    """

    flops_per_s: float
    bytes_per_s: float
    name: str = "user"
    dtype: str = ""
    source: str = "given by the user"

    def __post_init__(self) -> None:
        for field_name in ("flops_per_s", "bytes_per_s"):
            v = getattr(self, field_name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or v == float("inf"):
                raise ValueError(f"Roofline: {field_name} must be a positive finite number, "
                                 f"got {v!r}")

    def floor(self, flops: float, nbytes: float) -> tuple[float, str]:
        """(time floor in s, "compute" or "memory": which limit sets it)."""
        compute, memory = flops / self.flops_per_s, nbytes / self.bytes_per_s
        return (compute, "compute") if compute >= memory else (memory, "memory")

    def to_dict(self) -> dict:
        return asdict(self)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def known(name: str, dtype: torch.dtype) -> Roofline | None:
    """The table entry for a device name (e.g. "NVIDIA H100 80GB HBM3"), if there is one."""
    for fragment, entry in KNOWN_DEVICES.items():
        if fragment.lower() in name.lower():
            d = dtype_name(dtype)
            peaks = entry["flops_per_s"]
            # fp16 runs on the same tensor cores as bf16; other dtypes get the fp32 rate.
            key = d if d in peaks else ("bfloat16" if d == "float16" else "float32")
            peak, source = peaks[key]
            source = f"FLOP/s: {source}; bandwidth: {MEASURED}"
            if key != d:
                source += f" ({key} figure used for {d})"
            return Roofline(peak, entry["bytes_per_s"], name, d, source)
    return None


_CACHE: dict[tuple[str, torch.dtype], Roofline] = {}


def _best_time(fn, device: torch.device, budget_s: float) -> float:
    """Fastest single call of ``fn`` within about ``budget_s`` (after one warm-up call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best, start = float("inf"), time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        t = time.perf_counter() - t0
        best = min(best, t)
        if time.perf_counter() - start > budget_s:
            return best


def measure(device: torch.device, dtype: torch.dtype, name: str, budget_s: float = 0.5
            ) -> Roofline:
    """Measure peaks on a real device: the vendor's fastest GEMM path (FLOP/s) and a large copy
    (bandwidth). On a CPU that is the better of MKL's matmul and oneDNN's convolution (on AMD
    CPUs oneDNN's conv has run ~7 % faster than MKL's matmul); float32 on CUDA is measured with
    TF32 off (the CUDA-core rate; TF32 runs are scaled from bf16 by the caller).

    Takes about ``budget_s`` the first time; cached per (device, dtype) for the process.
    """
    key = (str(device), dtype)
    if key not in _CACHE:
        if not dtype.is_floating_point:
            dtype = torch.float32
        # On a CPU a cache-resident 512^2 matmul repeated many times finds the peak best: with
        # few long calls, any other load on a shared machine hides it.
        n = 4096 if device.type == "cuda" else 512
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            peak = 2 * n**3 / _best_time(lambda: torch.mm(a, b), device, budget_s / 3)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        what = f"best {n}x{n} {dtype_name(dtype)} matmul"
        if device.type == "cpu":  # a 5x5 conv of LeNet's conv2 kind, 1.3 GFLOP
            x = torch.randn(8, 128, 14, 14, dtype=dtype)
            w = torch.randn(256, 128, 5, 5, dtype=dtype)
            flops = 2 * 8 * 256 * 128 * 25 * 10 * 10
            conv = flops / _best_time(lambda: torch.nn.functional.conv2d(x, w), device,
                                      budget_s / 3)
            peak, what = max(peak, conv), f"{what} or 5x5 conv, whichever is faster"
        src = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # beyond CPU caches
        dst = torch.empty_like(src)
        t_copy = _best_time(lambda: dst.copy_(src), device, budget_s / 3)
        _CACHE[key] = Roofline(
            flops_per_s=peak, bytes_per_s=2 * src.numel() / t_copy, name=name,
            dtype=dtype_name(dtype),
            source=f"measured now: {what}, 64 MiB copy (read + write)")
    return _CACHE[key]


def device_name(device: torch.device) -> str:
    """A readable name: the GPU model, the CPU model, or the device type."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return f"cpu ({line.split(':', 1)[1].strip()})"
        except OSError:
            pass
    return device.type


def for_device(device: torch.device | str, dtype: torch.dtype
               ) -> tuple[Roofline | None, str | None]:
    """(roofline, note): the table entry, or a measurement, or None with the reason."""
    if isinstance(device, str) and not _is_device_string(device):
        found = known(device, dtype)
        return found, None if found else f"no roofline known for {device!r}; pass roofline="
    device = torch.device(device)
    name = device_name(device)
    found = known(name, dtype)
    if found:
        return found, None
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available()):
        return measure(device, dtype, name), None
    return None, f"no roofline for device {device.type!r} (nothing to measure); pass roofline="


def _is_device_string(s: str) -> bool:
    try:
        torch.device(s)
        return True
    except RuntimeError:
        return False

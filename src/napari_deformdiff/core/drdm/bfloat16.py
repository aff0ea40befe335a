"""RecResACNet for inference in mixed bfloat16: the U-Net passes in bfloat16 (the input convolution in
float32, see RecResACNet.to_mixed_bfloat16), the field algebra between them in float32.

On the CPU the bfloat16 network is compiled with torch.compile, which fuses the norms and
activations into the convolutions' neighbours; on CPUs with AMX its convolutions run about twice as
fast as in float32. Compiling takes 10-40 s once per process and network; later processes load
the compiled kernels from Inductor's on-disk cache, kept in <cache folder>/torchinductor (the
weights' cache folder: $DEFORMDIFF_CACHE or the user cache folder) unless TORCHINDUCTOR_CACHE_DIR
is set (PyTorch's default, a temporary folder, is emptied on reboot). Where compiling fails (no
C++ compiler), the network runs uncompiled.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .nets import RecResACNet, recursive_refinement

PRECISIONS = ("float32", "bfloat16")

_RUNNERS: OrderedDict = OrderedDict()  # (device, weights digest) -> runner, the most recent last
_KEEP = 2
_LOCK = threading.Lock()


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError unless `precision` is known and, for bfloat16, the device computes it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "bfloat16":
        if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise ValueError("this CPU has no native bfloat16 (AVX512-BF16 or AMX); use precision float32.")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU has no bfloat16; use precision float32.")


INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_persistent_compile_cache() -> str:
    """Point Inductor's on-disk cache at <cache folder>/torchinductor unless the user chose one; its path.

    Importing torch._dynamo (any earlier torch.compile, some libraries) writes PyTorch's default, a
    temporary folder, into the environment variable: that value is not a choice and is replaced."""
    current = os.environ.get(INDUCTOR_CACHE_ENV)
    if not current or _is_inductor_default(current):
        from ..weights.registry import cache_dir

        os.environ[INDUCTOR_CACHE_ENV] = str(cache_dir() / "torchinductor")
    return os.environ[INDUCTOR_CACHE_ENV]


def _is_inductor_default(path: str) -> bool:
    try:
        from torch._inductor.runtime.runtime_utils import default_cache_dir
    except ImportError:  # another PyTorch layout: keep what is set
        return False
    return os.path.abspath(path) == os.path.abspath(default_cache_dir())


class Bfloat16Recovery(nn.Module):
    """Same call as RecResACNet: (x (B, 1, *S) float32, t) -> recovery field in authors' units, float32."""

    def __init__(self, model: RecResACNet, device: torch.device):
        super().__init__()
        net = copy.deepcopy(model).eval().to(device).to_mixed_bfloat16().set_eager_fast_path(False)
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last if net.ndims == 2 else torch.channels_last_3d)
        self.net = net
        self.ndims, self.steps = net.ndims, net.steps
        self.compiled = device.type == "cpu"
        if self.compiled:
            use_persistent_compile_cache()
        self._single = torch.compile(net.single, dynamic=False) if self.compiled else net.single
        self.ready = not self.compiled

    def warm_up(self, grid) -> None:
        """Compile now (one pass on a blank image of the model grid) rather than at the first step."""
        if not self.ready:
            dev = self.weight_device()
            with torch.inference_mode():
                self._run(torch.zeros(1, 1, *grid, device=dev), torch.zeros(1, dtype=torch.long, device=dev))
            self.ready = True

    def weight_device(self) -> torch.device:
        return self.net.weight_device()

    def _run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        try:
            return self._single(x, t)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run the same network uncompiled
            if not self.compiled:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); the bfloat16 network runs "
                          "uncompiled, which is slower.", RuntimeWarning, stacklevel=2)
            self.compiled, self._single = False, self.net.single
            return self._single(x, t)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return recursive_refinement(self._run, x, self.net._check(x, t))


def weights_digest(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers (their names and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def bfloat16_runner(model: RecResACNet, device: torch.device) -> Bfloat16Recovery:
    """The mixed-bfloat16 runner of `model` on `device`. Made and compiled once per set of weights
    (a reloaded or copied model with the same weights reuses it); the two most recent are kept."""
    key = (device.type, device.index, model.ndims, weights_digest(model))
    with _LOCK:
        if key not in _RUNNERS:
            _RUNNERS[key] = Bfloat16Recovery(model, device)
            while len(_RUNNERS) > _KEEP:
                _RUNNERS.popitem(last=False)
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]

"""The output projection (`lm_head`) of a float32 text model on the CPU, run through oneDNN
for batches of 4 rows or more.

Why: the lm_head is the widest matmul of a small model (SmolLM2: 49152 x 576, a fifth of
its weights). For 4-15 rows MKL's sgemm, which `F.linear` calls, runs at a fraction of its
one-row speed on this weight (4-16 rows cost 2-3x one row); oneDNN's matmul
(`torch.ops.mkldnn._linear_pointwise`, the kernel inductor's CPU fusions call) reads the
same weight, with no copy, faster there. Whole decode steps, both heads alternated in one
process: `python -m bench.kernel`, the "Kernel" section of bench/RESULTS.md.

Rows below `MIN_ROWS` keep `F.linear`, so a request decoding alone (one choice) computes
exactly what `model.generate` computes (n >= 4 choices, or a prompt scored for logprobs,
make 4 rows or more). The two kernels sum in different orders: logits differ by
about 1e-6 relative (the same size as MKL's own differences between batch sizes).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 4


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's linear op and it agrees with `F.linear`."""
    if not torch.backends.mkldnn.is_available():
        return False
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None:
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(64, 32, generator=gen)
        x = torch.randn(MIN_ROWS, 32, generator=gen)
        with torch.inference_mode():
            got = op(x, w, None, "none", [], "")
        return bool(torch.allclose(got, F.linear(x, w), rtol=1e-4, atol=1e-5))
    except (RuntimeError, TypeError):  # an op with another signature in this build
        return False


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward`, through oneDNN for float32 CPU inputs of >= MIN_ROWS rows."""
    w = self.weight
    if (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and x.numel() >= MIN_ROWS * x.shape[-1]
    ):
        return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")
    return F.linear(x, w, self.bias)


def use_onednn_head(model) -> bool:
    """Route `model`'s output projection through oneDNN for batches (see the module doc).

    Only a plain `nn.Linear` head of a float32 model on the CPU is changed, and only its
    `forward` (weights, tying, `state_dict` and device moves are untouched; inputs on
    another device or dtype take `F.linear`). Returns whether it was changed."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear or head.weight.device.type != "cpu":
        return False
    if head.weight.dtype != torch.float32 or not onednn_linear_available():
        return False
    head.forward = types.MethodType(_forward, head)
    return True

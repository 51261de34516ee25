"""vLLM's LoRA on CPU at the base model's speed.

vLLM's CPU path (vllm.lora.ops.torch_ops, used by PunicaWrapperCPU) computes each token's LoRA product
as `weights[indices]` followed by a batched einsum: it copies the whole LoRA matrix once per token
(a 500-token prompt copies each q/k/v/o matrix 500 times) and multiplies 500 tiny matrices one by one.
That made runtime LoRA about 4x slower than the base on this CPU (benchmarks/engines.py). Here each
LoRA present in the batch is one matmul over its tokens' rows, the same arithmetic without the copies.
Index -1 (a request without LoRA) contributes nothing, as in vLLM's GPU kernels (the torch ops would
read the last slot's weights for it).

Below them, for serving (decode-bound, where per-call overhead is the cost): one fused product per
layer and step in place of one op call per slice (`add_lora_linear`), and LoRA inside a compiled model
(opaque ops, so vLLM's CPU compilation can stay on with LoRA).

`register` is vLLM's general-plugin hook: called in every vLLM process before the model loads, maybe
more than once. JMED_VLLM_PLUGIN=0 turns it all off, JMED_VLLM_FUSED=0 the fused product and the
compiled LoRA (the benchmark measures them).
"""

from __future__ import annotations

import os


def lora_matmul(inputs, weights, indices, dtype):
    """[T, in] x per-token LoRA matrices weights[indices[t]] ([L, out, in] or [L, 1, out, in]) -> [T, out]
    in `dtype`, or None when it is all zeros: vLLM wraps every linear layer (the MLP's too) for LoRA,
    and a layer the adapter does not train holds zero weights, so skipping them skips the MLP's work.
    The product runs in the input's dtype (bf16 on AMX; converting [T, in] activations to the fp32
    buffer's dtype cost more than the product) and only the [T, out] result is converted."""
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(1)
    rows = inputs.shape[0]
    if indices.numel() != rows:  # vLLM passes one index per token; keep its broadcasting of a lone index
        indices = indices.expand(rows) if indices.numel() == 1 else indices[:rows]
    live = [lora for lora in torch.unique(indices).tolist() if lora >= 0 and bool(weights[lora].any())]
    if not live:
        return None
    if len(live) == 1 and bool((indices == live[0]).all()):
        return (inputs @ weights[live[0]].to(inputs.dtype).t()).to(dtype)
    out = torch.zeros(rows, weights.shape[1], dtype=dtype)
    for lora in live:
        take = (indices == lora).nonzero(as_tuple=True)[0]
        out[take] = (inputs[take] @ weights[lora].to(inputs.dtype).t()).to(dtype)
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    out = lora_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    width = lora_a_weights.shape[-2]
    if out is None:
        output_tensor[:, :width] = 0
    else:
        output_tensor[:, :width] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    out = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])  # adapter and model may pad differently
    if out is None:
        if not add_inputs:
            output_tensor[:, :common] = 0
        return
    limit = 1 if out.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    if add_inputs:
        output_tensor[:, :common] += out[:limit, :common]
    else:
        output_tensor[:, :common] = out[:limit, :common]


def bgmv_expand_slice(
    inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs=True
):
    out = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if out is None:
        if not add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] = 0
        return
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out


def _per_token(lora_indices_tensor, seq_len_tensor):
    import torch

    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(inputs, lora_a_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, scaling):  # fmt: skip
    bgmv_shrink(inputs, lora_a_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), scaling)


def sgmv_expand(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor, lora_indices_tensor,
                batches, max_seq_length, token_nums, add_inputs=False):  # fmt: skip
    bgmv_expand(inputs, lora_b_weights, output_tensor, _per_token(lora_indices_tensor, seq_len_tensor), add_inputs)


def sgmv_expand_slice(inputs, lora_b_weights, output_tensor, b_seq_start_loc, seq_len_tensor,
                      lora_indices_tensor, batches, max_seq_length, token_nums, slice_offset, slice_size,
                      add_inputs=False):  # fmt: skip
    idx = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, idx, slice_offset, slice_size, add_inputs)


# ---- one fused product per layer and step ---------------------------------------------------------
# The ops above are still called once per slice (q, k, v; gate, up), shrink and expand apart, each
# finding the batch's adapters again: about 420 calls per decode step for a 30-layer model, which
# made a decode step with one adapter cost 100 ms against the base's 47 (measured, SmolLM2-135M).
# `add_lora_linear` below does a layer in two matmuls: the batch's adapters are found once per step
# (update_metadata), and each layer's live slices are fused once per adapter load: their A matrices
# stacked, their B matrices on a block diagonal (float32, as vLLM's buffer), a layer the adapter
# leaves at zero skipped. The stacked weights change only in LoRAModelManager.activate_adapter (set_lora
# or reset_lora into a slot; it returns False when the adapter is active already, as on every step)
# and remove_all_adapters: a change bumps `_GEN`, which makes every fused copy stale.
_GEN = [0]
_FUSED: dict = {}


def _bump(fn):
    import functools

    @functools.wraps(fn)
    def bumped(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            _changed()
            raise
        if result is not False:
            _changed()
        return result

    bumped._jmed = True
    return bumped


def _changed() -> None:
    _GEN[0] += 1
    _FUSED.clear()


def step_plan(token_indices):
    """[(lora slot, rows or None for every row)] for the LoRAs of a batch's tokens (-1: none)."""
    import torch

    slots = torch.unique(token_indices).tolist()
    live = [s for s in slots if s >= 0]
    if len(slots) == 1 and live:
        return [(live[0], None)]
    return [(s, (token_indices == s).nonzero(as_tuple=True)[0]) for s in live]


def fused(lora_a_stacked, lora_b_stacked, slot: int, output_slices, dtype):
    """(A [n*r, in] in `dtype`, B [sum(output_slices), n*r] float32) over the slices whose weights are
    not all zero, or None when none is; cached until an adapter changes."""
    import torch

    key = (lora_a_stacked[0].data_ptr(), slot, dtype)  # the storage: a compiled graph passes other objects
    hit = _FUSED.get(key)
    if hit is not None and hit[0] == _GEN[0]:
        return hit[1]
    a_parts, blocks, offset = [], [], 0
    for a, b, width in zip(lora_a_stacked, lora_b_stacked, output_slices):
        a, b = a[slot].reshape(a.shape[-2], a.shape[-1]), b[slot].reshape(b.shape[-2], b.shape[-1])
        if bool(a.any()) and bool(b.any()):
            a_parts.append(a.to(dtype))
            blocks.append((offset, b[:width].float()))
        offset += width
    out = None
    if a_parts:
        r = a_parts[0].shape[0]
        big_b = torch.zeros(offset, r * len(a_parts), dtype=torch.float32)
        for k, (at, b) in enumerate(blocks):
            big_b[at : at + b.shape[0], k * r : (k + 1) * r] = b
        out = (torch.cat(a_parts), big_b)
    _FUSED[key] = (_GEN[0], out)
    return out


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
    """vLLM's PunicaWrapperCPU.add_lora_linear (y[:, slices] += x @ A_s^T @ B_s^T * scale, per token's
    LoRA) in two matmuls per adapter in the batch; inside a compiled model, the opaque op jmed::lora_linear."""
    import torch

    if torch.compiler.is_compiling():
        torch.ops.jmed.lora_linear(
            y.view(-1, y.shape[-1]),
            x.reshape(-1, x.shape[-1]),
            list(lora_a_stacked),
            list(lora_b_stacked),
            [int(w) for w in output_slices],
            self._jmed_id,
            float(scale),
        )
        return None
    return _add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer, **kwargs)


def _add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=None, **kwargs):
    plan = getattr(self, "_jmed_plan", None)
    x2 = x.reshape(-1, x.shape[-1])
    y2 = y.view(-1, y.shape[-1])
    width = sum(output_slices)
    if (
        plan is None
        or y2.shape[-1] < width
        or any(rows is not None and rows.numel() and int(rows[-1]) >= x2.shape[0] for _, rows in plan)
    ):
        return _ORIGINAL["add_lora_linear"](
            self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
        )
    for slot, rows in plan:
        f = fused(lora_a_stacked, lora_b_stacked, slot, output_slices, x2.dtype)
        if f is None:
            continue
        a, b = f
        xs = x2 if rows is None else x2[rows]
        h = (xs @ a.t()).float()
        if scale != 1.0:
            h *= scale
        delta = h @ b.t()
        if rows is None:
            y2[:, :width] += delta
        else:
            y2[rows, :width] += delta


def update_metadata(self, *args, **kwargs):
    _ORIGINAL["update_metadata"](self, *args, **kwargs)
    self._jmed_plan = step_plan(self.token_lora_indices)


# ---- LoRA in a compiled model ---------------------------------------------------------------------
# vLLM turns torch.compile off on CPU when LoRA is on: its CPU LoRA path branches in Python on each
# step's batch (prefill or decode, which adapters), and a model traced once would keep the branches
# of the step it was traced on. Here the two LoRA entry points inside the model (linear layers and
# the embedding) are opaque ops when compiled: they run as above, on each step's own plan. A compiled
# model decodes about a third faster on CPU (benchmarks/engines.py); jmed starts vLLM compiled on CPU
# unless JMED_VLLM_EAGER=1 (jmed.engine.compiled_on_cpu).
_WRAPPERS: list = []


def _init(self, *args, **kwargs):
    _ORIGINAL["__init__"](self, *args, **kwargs)
    self._jmed_id = len(_WRAPPERS)
    _WRAPPERS.append(self)


def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs):
    import torch

    if torch.compiler.is_compiling():
        torch.ops.jmed.lora_embedding(y, x, lora_b_stacked, self._jmed_id, bool(add_inputs))
        return None
    return _ORIGINAL["add_lora_embedding"](self, y, x, lora_b_stacked, add_inputs, **kwargs)


def _define_ops() -> None:
    import torch

    if hasattr(torch.ops.jmed, "lora_linear"):
        return

    # schemas spelled out: this module's annotations are strings (from __future__ import annotations)
    @torch.library.custom_op(
        "jmed::lora_linear",
        mutates_args=("y",),
        schema="(Tensor(a0!) y, Tensor x, Tensor[] a, Tensor[] b, int[] slices, int wrapper, float scale) -> ()",
    )
    def lora_linear(y, x, a, b, slices, wrapper, scale):
        _add_lora_linear(_WRAPPERS[wrapper], y, x, tuple(a), tuple(b), scale, tuple(slices))

    @lora_linear.register_fake
    def _(y, x, a, b, slices, wrapper, scale):
        return None

    @torch.library.custom_op(
        "jmed::lora_embedding",
        mutates_args=("y",),
        schema="(Tensor(a0!) y, Tensor x, Tensor b, int wrapper, bool add_inputs) -> ()",
    )
    def lora_embedding(y, x, b, wrapper, add_inputs):
        _ORIGINAL["add_lora_embedding"](_WRAPPERS[wrapper], y, x, b, add_inputs)

    @lora_embedding.register_fake
    def _(y, x, b, wrapper, add_inputs):
        return None


def _compile_with_lora() -> None:
    """Keep vLLM's CPU compilation (DYNAMO_TRACE_ONCE) when LoRA is on and compilation was asked for."""
    from vllm.config import CompilationMode
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.check_and_update_config.__func__
    if getattr(original, "_jmed", False):
        return

    def check_and_update_config(cls, vllm_config):
        asked = vllm_config.compilation_config.mode
        original(cls, vllm_config)
        if vllm_config.lora_config is not None and asked == CompilationMode.VLLM_COMPILE:
            vllm_config.compilation_config.mode = CompilationMode.DYNAMO_TRACE_ONCE

    check_and_update_config._jmed = True
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


_ORIGINAL: dict = {}


OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def register() -> None:
    if os.environ.get("JMED_VLLM_PLUGIN", "1") == "0":
        return
    import importlib

    me = globals()
    for name in ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.ops.torch_ops", "vllm.lora.punica_wrapper.punica_cpu"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # another vLLM layout: leave it as it is
            continue
        for op in OPS:
            if hasattr(module, op):
                setattr(module, op, me[op])
    if os.environ.get("JMED_VLLM_FUSED", "1") == "0":
        return
    try:
        from vllm.lora.model_manager import LoRAModelManager
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:
        return
    if getattr(PunicaWrapperCPU.add_lora_linear, "__module__", "") == __name__:
        return  # registered already in this process
    for name in ("add_lora_linear", "update_metadata", "add_lora_embedding", "__init__"):
        _ORIGINAL[name] = getattr(PunicaWrapperCPU, name)
    PunicaWrapperCPU.add_lora_linear = add_lora_linear
    PunicaWrapperCPU.update_metadata = update_metadata
    PunicaWrapperCPU.add_lora_embedding = add_lora_embedding
    PunicaWrapperCPU.__init__ = _init
    _define_ops()
    try:
        _compile_with_lora()
    except ImportError:  # another vLLM layout: its own rule stands
        pass
    for name in ("activate_adapter", "remove_all_adapters"):
        fn = getattr(LoRAModelManager, name, None)
        if fn is not None and not getattr(fn, "_jmed", False):
            setattr(LoRAModelManager, name, _bump(fn))

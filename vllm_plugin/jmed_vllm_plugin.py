"""vLLM's LoRA on CPU at the base model's speed.

vLLM's CPU path (vllm.lora.ops.torch_ops, used by PunicaWrapperCPU) computes each token's LoRA product
as `weights[indices]` followed by a batched einsum: it copies the whole LoRA matrix once per token
(a 500-token prompt copies each q/k/v/o matrix 500 times) and multiplies 500 tiny matrices one by one.
That made runtime LoRA about 4x slower than the base on this CPU (benchmarks/engines.py). Here each
LoRA present in the batch is one matmul over its tokens' rows, the same arithmetic without the copies.
Index -1 (a request without LoRA) contributes nothing, as in vLLM's GPU kernels (the torch ops would
read the last slot's weights for it).

`register` is vLLM's general-plugin hook: called in every vLLM process before the model loads, maybe
more than once. JMED_VLLM_PLUGIN=0 turns it off (the benchmark measures both).
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

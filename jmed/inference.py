"""Tokenising and batched inference shared by training, evaluation and serving.

One encoding (`encode`: prompt with BOS, target + EOS) and one choice of solved examples (`shots_for`)
for all three, so a served or evaluated prompt is the prompt the adapter was trained on. Two engines,
written against a plain HF causal LM + tokenizer:
- `generate`: greedy decoding, left padding + attention mask, KV cache, stop at EOS or `max_new_tokens`.
- `loglik`: each prompt is run once, right-padded (the causal mask alone is exact), logits taken only
  where each prompt ends; single-token continuations (letters) are read from there. Longer ones (choice
  text) reuse the prompt's KV cache, repeated per choice, in one more batched pass.
torch is imported inside the functions.
"""

from __future__ import annotations


def shots_for(items: list, index: int, k: int) -> list:
    """The k solved examples placed before item `index`: the next k questions, cyclically."""
    from jmed.data import Question

    if k <= 0:
        return []
    pool = [q for j, q in enumerate(items[index + 1 :] + items[:index]) if isinstance(q, Question)]
    return pool[:k]


def encode(prompt: str, target: str, tokenizer) -> tuple[list[int], list[int]]:
    """Prompt ids (with the tokenizer's BOS unless the prompt text already has it) and target ids + EOS."""
    bos = tokenizer.bos_token
    special = not (bos and prompt.startswith(bos))
    p = tokenizer(prompt, add_special_tokens=special).input_ids
    t = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return p, t


def _sorted_batches(lengths: list[int], batch_size: int, max_tokens: int = 0):
    """Indices in batches of similar length (longest first: less padding, OOM shows up early), each of at
    most `batch_size` rows and, padded to its longest, `max_tokens` tokens (default MAX_BATCH_TOKENS;
    a row alone is never split)."""
    from jmed.config import MAX_BATCH_TOKENS

    budget = max_tokens or MAX_BATCH_TOKENS
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= max(1, batch_size) or (len(batch) + 1) * lengths[batch[0]] > budget):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def prompt_token_limit(model, tokenizer) -> int:
    """The longest prompt jmed runs on this model: MAX_PROMPT_TOKENS, or the model's context if shorter."""
    from jmed.config import MAX_PROMPT_TOKENS

    limits = [MAX_PROMPT_TOKENS]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and context > 0:
        limits.append(context)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 10**7:  # transformers' "no limit" is 1e30
        limits.append(declared)
    return min(limits)


def over_limit(tokenizer, prompts: list[str], limit: int) -> list[tuple[int, int]]:
    """(index, tokens) of the prompts longer than `limit` tokens."""
    return [(i, n) for i, p in enumerate(prompts) if (n := len(encode_prompt(tokenizer, p))) > limit]


def _left_pad(seqs: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
    return ids, mask


def _progress(total: int, desc: str | None):
    """A questions/s bar; none when `desc` is None (serving answers requests, not a run)."""
    from tqdm.auto import tqdm

    from jmed.console import progress_disabled

    return tqdm(
        total=total,
        desc=desc,
        unit="q",
        dynamic_ncols=True,
        leave=False,
        disable=True if desc is None else progress_disabled(),
    )


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; cannot batch")
    return pad


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids exactly as training builds them (`encode`: BOS added unless present)."""
    return encode(prompt, "", tokenizer)[0]


def encode_continuation(tokenizer, continuation: str) -> list[int]:
    """Answer token ids as training builds its targets (`encode`: encoded on their own), minus EOS."""
    return encode("", continuation, tokenizer)[1][:-1]


# Generation length (max_new_tokens = 0 means "fit the answer"): letters need a few tokens; choice
# text needs the longest answer the question allows, tokenised, plus room for EOS and punctuation.
LETTER_MAX_NEW_TOKENS = 16
TEXT_MARGIN_TOKENS = 8


def answer_budget(tokenizer, choices: list[str], n_answers: int, protocol: str) -> int:
    """New tokens that let the longest possible answer finish: for the text protocol the tokenised
    length of the `n_answers` longest choices joined by "," (as gold is written) plus a margin."""
    if protocol != "text" or not choices:
        return LETTER_MAX_NEW_TOKENS
    longest = sorted(choices, key=lambda c: -len(encode_continuation(tokenizer, c)))[: max(1, n_answers)]
    return len(encode_continuation(tokenizer, ",".join(longest))) + TEXT_MARGIN_TOKENS


def generate_ids(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int = 8,
    max_new_tokens: int | list[int] = 16,
    desc: str = "generate",
    max_batch_tokens: int = 0,
) -> tuple[list[list[int]], list[bool]]:
    """Greedy new token ids per prompt (EOS and what follows cut off), in input order, and whether each
    was cut off by its limit before EOS. `max_new_tokens`: one limit, or one per prompt (a batch runs
    to its longest limit; each row is cut back to its own, so results never depend on batching)."""
    import torch

    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[list[int]] = [[] for _ in prompts]
    truncated = [False] * len(prompts)
    device = next(model.parameters()).device
    bar = _progress(len(prompts), desc)
    with torch.inference_mode():
        for batch in _sorted_batches([len(e) for e in encoded], batch_size, max_batch_tokens):
            ids, mask = _left_pad([encoded[i] for i in batch], pad)
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(limits[i] for i in batch),
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=eos,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            new = gen[:, ids.shape[1] :].tolist()
            for row, i in enumerate(batch):
                toks = new[row][: limits[i]]
                if eos is not None and eos in toks:
                    out[i] = toks[: toks.index(eos)]
                else:
                    out[i], truncated[i] = toks, True
            bar.update(len(batch))
    bar.close()
    return out, truncated


def generate(
    model,
    tokenizer,
    prompts: list[str],
    batch_size: int = 8,
    max_new_tokens: int | list[int] = 16,
    desc: str = "generate",
    with_truncated: bool = False,
    max_batch_tokens: int = 0,
):
    """Greedy continuations of `prompts` (decoded, special tokens skipped), in input order; with
    `with_truncated`, also the cut-off flags of `generate_ids`."""
    ids, truncated = generate_ids(model, tokenizer, prompts, batch_size, max_new_tokens, desc, max_batch_tokens)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    return (texts, truncated) if with_truncated else texts


def _forward_kwargs(model) -> dict:
    """What the model's forward accepts: `logits_to_keep`, and `cache` (transformers 5) or `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return {"keep": "logits_to_keep" in params, "cache": "cache" if "cache" in params else "past_key_values"}


def encode_choices(tokenizer, prompts: list[str], continuations: list[list[str]]):
    """(prompt ids, continuation ids per prompt) for the log-likelihood protocol, as every engine scores
    them; a continuation that encodes to no tokens is an error naming it."""
    p_ids = [encode_prompt(tokenizer, p) for p in prompts]
    c_ids = [[encode_continuation(tokenizer, c) for c in cs] for cs in continuations]
    for q, cs in enumerate(c_ids):
        for c, ids in enumerate(cs):
            if not ids:
                raise ValueError(f"continuation {continuations[q][c]!r} of prompt {q} encodes to no tokens")
    return p_ids, c_ids


def loglik(
    model,
    tokenizer,
    prompts: list[str],
    continuations: list[list[str]],
    batch_size: int = 8,
    desc: str = "loglik",
    max_batch_tokens: int = 0,
) -> list[list[float]]:
    """Sum of log-probabilities of each continuation given its prompt: `scores[q][c]`.

    Each prompt is encoded and run once; its KV cache is repeated per choice (`reorder_cache`) and all
    continuations of the batch are scored in a single second forward pass.
    """
    import torch

    pad = _pad_id(tokenizer)
    p_ids, c_ids = encode_choices(tokenizer, prompts, continuations)
    scores: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    kw = _forward_kwargs(model)
    bar = _progress(len(prompts), desc)
    with torch.inference_mode():
        for batch in _sorted_batches([len(e) for e in p_ids], batch_size, max_batch_tokens):
            # Prompts right-padded with no attention mask: pads come after every real token, so the plain
            # causal mask is exact and attention takes its fast path. Logits only where a prompt ends.
            seqs = [p_ids[i] for i in batch]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, x in enumerate(seqs):
                ids[row, : len(x)] = torch.tensor(x)
                mask[row, : len(x)] = 1
            ids, mask = ids.to(device), mask.to(device)
            ends = torch.tensor([len(x) - 1 for x in seqs], device=device)
            keep = torch.unique(ends)  # sorted
            multi = any(len(c) > 1 for i in batch for c in c_ids[i])
            if kw["keep"]:
                res = model(input_ids=ids, use_cache=multi, logits_to_keep=keep)
                last = res.logits[torch.arange(len(seqs), device=device), torch.searchsorted(keep, ends)]
            else:
                res = model(input_ids=ids, use_cache=multi)
                last = res.logits[torch.arange(len(seqs), device=device), ends]
            first = torch.log_softmax(last.float(), dim=-1).tolist()  # next-token log-probs per prompt
            if not multi:
                for row, i in enumerate(batch):
                    scores[i] = [first[row][c[0]] for c in c_ids[i]]
                bar.update(len(batch))
                continue
            # Second pass: one row per (question, choice) on the question's prompt cache, repeated per
            # choice; each continuation (minus its last token) starts right after its own prompt.
            rows = [(row, i, c) for row, i in enumerate(batch) for c in c_ids[i]]
            rows_idx = torch.tensor([r for r, _, _ in rows], device=device)
            cache = getattr(res, "cache", None) or res.past_key_values
            cache.reorder_cache(rows_idx)
            cwidth = max(1, max(len(c) for _, _, c in rows) - 1)
            cont = torch.full((len(rows), cwidth), pad, dtype=torch.long)
            cmask = torch.zeros_like(cont)
            for k, (_, _, c) in enumerate(rows):
                if len(c) > 1:
                    cont[k, : len(c) - 1] = torch.tensor(c[:-1])
                    cmask[k, : len(c) - 1] = 1
            cont, cmask = cont.to(device), cmask.to(device)
            cpos = (ends[rows_idx] + 1).unsqueeze(1) + torch.arange(cwidth, device=device)
            out = model(
                input_ids=cont,
                attention_mask=torch.cat([mask[rows_idx], cmask], dim=1),
                position_ids=cpos,
                use_cache=False,
                **{kw["cache"]: cache},
            )
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            tgt = torch.full((len(rows), cwidth), 0, dtype=torch.long)
            for k, (_, _, c) in enumerate(rows):
                tgt[k, : len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
            picked = (logp.gather(-1, tgt.to(device).unsqueeze(-1)).squeeze(-1) * cmask).sum(-1).tolist()
            per_q: dict[int, list[float]] = {}
            for k, (row, i, c) in enumerate(rows):
                per_q.setdefault(i, []).append(first[row][c[0]] + picked[k])
            for i, vals in per_q.items():
                scores[i] = vals
            bar.update(len(batch))
    bar.close()
    return scores


def loglik_concat(
    model, tokenizer, prompts: list[str], continuations: list[list[str]], batch_size: int = 8
) -> list[list[float]]:
    """Reference implementation (no cache sharing): every prompt+choice is its own sequence.

    Kept for tests (it must agree with `loglik`) and the benchmark's engine comparison.
    """
    import torch

    pad = _pad_id(tokenizer)
    items = []
    for q, (p, cs) in enumerate(zip(prompts, continuations)):
        pi = encode_prompt(tokenizer, p)
        for c in cs:
            items.append((q, pi, encode_continuation(tokenizer, c)))
    scores: list[list[float]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            ids, mask = _left_pad([pi + ci for _, pi, ci in chunk], pad)
            ids, mask = ids.to(device), mask.to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float(), -1)
            width = ids.shape[1]
            for row, (q, pi, ci) in enumerate(chunk):
                n = len(ci)
                tgt = torch.tensor(ci, device=device)
                positions = torch.arange(width - n - 1, width - 1, device=device)
                scores[q].append(logp[row, positions, tgt].sum().item())
    return scores

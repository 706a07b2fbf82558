"""Runs that carry a KV cache: teacher-forced evaluation fed in chunks, and greedy generation.

The intervention is a KV-cache policy (massact.kvcache.KVPolicy). Each batch gets a fresh cache
(or, for prompts that share their first tokens, a copy of the cache after them); the sequence
goes through in chunks, the cache dropping what its plan allows after each. The
attention masks every query to what its head may read, so the chunk size changes the peak
memory and the speed, never the numbers: one chunk of the whole sequence, or one token at a
time, read the same keys.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from massact.kvcache import KVPlanError, KVPolicy
from massact.models import LoadedModel
from massact.requests import KV_POINT, LOSS_POINT
from massact.runners.forward import token_nll


def _policy(lm: LoadedModel, intervention) -> KVPolicy:
    if not isinstance(intervention, KVPolicy):
        raise KVPlanError(f"a decode pass runs under a KV cache policy, not {intervention.key!r}")
    if not lm.adapter.is_decoder:
        raise KVPlanError(f"{lm.name} is an encoder: it keeps no KV cache between tokens")
    return intervention


def run_decode(lm: LoadedModel, ids: torch.Tensor, wants: dict[str, frozenset[str]], intervention, *, eager: bool,
               batch_size: int, progress: Callable[[int], None], chunk: int = 512, start: int = 1,
               checkpoints: tuple[int, ...] = ()) -> dict[str, dict[str, torch.Tensor]]:
    """Per sample: the mean next-token NLL of the tokens at positions >= ``start`` (``output/loss``)
    and each of those tokens' NLL (``output/token_nll``, (N, T - start), token ``start`` first), the
    KV bytes held per sequence after each of ``checkpoints`` tokens (``kv/bytes``), and the seconds
    per sequence (``kv/seconds``)."""
    policy = _policy(lm, intervention)
    T = ids.shape[1]
    if not 1 <= start < T:
        raise KVPlanError(f"the loss starts at position {start}; the samples have {T} tokens")
    if any(not 0 < c <= T for c in checkpoints):
        raise KVPlanError(f"KV bytes asked after {checkpoints} tokens; the samples have {T}")
    cuts = sorted({*range(chunk, T, chunk), *checkpoints, T})
    losses, held, seconds = [], [], []
    with torch.no_grad(), policy.applied(lm.model, lm.adapter):
        for b in range(0, len(ids), batch_size):
            x = ids[b:b + batch_size].to(lm.device)
            cache, nll, row, at = policy.cache(), [], [], 0
            t0 = time.perf_counter()
            for cut in cuts:
                lo, hi = max(at, start - 1), min(cut, T - 1)  # the positions whose next token the loss reads
                if hi > lo:  # the output head for those alone: the rest of the chunk only fills the cache
                    logits = lm.model(input_ids=x[:, at:cut], past_key_values=cache, use_cache=True,
                                      logits_to_keep=cut - lo).logits
                    nll.append(token_nll(logits[:, :hi - lo], x[:, lo + 1:hi + 1]))
                else:
                    lm.model.base_model(input_ids=x[:, at:cut], past_key_values=cache, use_cache=True)
                at = cut
                if cut in checkpoints:
                    cache.compact()
                    row.append(cache.nbytes() / len(x))  # per sequence of the batch
            seconds += [(time.perf_counter() - t0) / len(x)] * len(x)
            losses.append(torch.cat(nll, dim=1).double().cpu())
            held += [row] * len(x)
            progress(min(b + batch_size, len(ids)))  # samples done
    token = torch.cat(losses)
    out = {LOSS_POINT: {"loss": token.mean(1), "token_nll": token},
           KV_POINT: {"bytes": torch.tensor(held, dtype=torch.float64), "seconds": torch.tensor(seconds)}}
    return {p: {s: v for s, v in out[p].items() if s in wants.get(p, ())} for p in out if p in wants}


def shared_tokens(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many first tokens two prompts share."""
    differ = (a != b).nonzero()
    return len(a) if not len(differ) else int(differ[0])


def run_generate(lm: LoadedModel, ids: torch.Tensor, wants: dict[str, frozenset[str]], intervention, *, eager: bool,
                 batch_size: int, progress: Callable[[int], None], chunk: int = 512, new_tokens: int = 8,
                 shared_prefix: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Per sample: the prompt fed in chunks, then ``new_tokens`` greedy tokens one at a time
    (``output/generated``, (N, new_tokens)) and their decoding rate (``kv/tokens_per_second``).

    ``shared_prefix``: the prompts go one at a time, and the tokens a prompt shares with the next are
    fed once, into a cache the next prompt starts from (a copy of it for this one): prompts that
    differ only past a point (a needle planted at several depths of one document) cost the tokens
    after it. Chunks of the cache read the same keys however the prompt is cut."""
    policy = _policy(lm, intervention)
    generated, rates = [], []
    T = ids.shape[1]
    with torch.no_grad(), policy.applied(lm.model, lm.adapter):
        step = 1 if shared_prefix else batch_size
        base, fed = (policy.cache() if shared_prefix else None), 0  # the cache of the prompt's first ``fed`` tokens
        for b in range(0, len(ids), step):
            x = ids[b:b + step].to(lm.device)
            if shared_prefix:
                if b and fed > shared_tokens(ids[b - 1], ids[b]):  # it holds tokens this prompt does not share
                    base, fed = policy.cache(), 0
                share = min(shared_tokens(ids[b], ids[b + 1]), T - 1) if b + 1 < len(ids) else 0
                for at in range(fed, share, chunk):
                    lm.model.base_model(input_ids=x[:, at:min(at + chunk, share)], past_key_values=base, use_cache=True)
                fed = max(fed, share)
                cache, at = copy.deepcopy(base), fed
            else:
                cache, at = policy.cache(), 0
            starts = range(at, T, chunk)
            for at in starts[:-1]:  # the prompt's chunks but the last only fill the cache
                lm.model.base_model(input_ids=x[:, at:at + chunk], past_key_values=cache, use_cache=True)
            logits = lm.model(input_ids=x[:, starts[-1]:], past_key_values=cache, use_cache=True,
                              logits_to_keep=1).logits
            steps = [logits[:, -1].argmax(-1)]
            t0 = time.perf_counter()
            for _ in range(new_tokens - 1):
                logits = lm.model(input_ids=steps[-1][:, None], past_key_values=cache, use_cache=True).logits
                steps.append(logits[:, -1].argmax(-1))
            rate = len(x) * (new_tokens - 1) / max(time.perf_counter() - t0, 1e-9)
            generated.append(torch.stack(steps, dim=1).cpu())
            rates += [rate] * len(x)
            progress(min(b + step, len(ids)))  # prompts done
    out = {LOSS_POINT: {"generated": torch.cat(generated)}, KV_POINT: {"tokens_per_second": torch.tensor(rates)}}
    return {p: {s: v for s, v in out[p].items() if s in wants.get(p, ())} for p in out if p in wants}

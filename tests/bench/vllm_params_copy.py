"""What vLLM's copy of a request's SamplingParams costs: deep (a shared object) or shallow (``skip_clone``).

    python tests/bench/vllm_params_copy.py

vLLM's input processor clones every request's SamplingParams: a deep copy, unless the object says it is
the request's own (``skip_clone=True``), then a shallow one. Tandem makes one per sample, with these
fields, and sets it (``vllm_host.sampling_params``). Needs vLLM installed (nothing here touches a GPU);
prints the best of five ``timeit`` repeats per operation, in microseconds.
"""

from __future__ import annotations

import timeit

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind


def make(skip: bool) -> SamplingParams:
    """A SamplingParams with the fields Tandem sets for a whole sample of the GPU benchmark."""
    return SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=256, stop=[], stop_token_ids=[], seed=None,
                          logprobs=None, ignore_eos=True, detokenize=True, output_kind=RequestOutputKind.FINAL_ONLY, skip_clone=skip)


def main() -> None:
    """Print the three timings."""
    n = 20000
    for label, stmt in [("construct", lambda: make(False)), ("deepcopy (clone, shared params)", make(False).clone), ("shallow (clone, skip_clone)", make(True).clone)]:
        best = min(timeit.repeat(stmt, number=n, repeat=5)) / n
        print(f"{label:36} {best * 1e6:7.2f} us")


if __name__ == "__main__":
    main()

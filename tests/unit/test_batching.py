"""Batching: training batches align targets with their per-token arrays, and the
transformers engine decodes a batch of prompts exactly as it decodes each alone."""


import torch

from service.runtime.engines.base import EngineRequest
from service.runtime.specs import FinishReason, SamplingSpec
from service.runtime.training import collate, sequence_logprobs
from service.runtime.validation import PreparedSequence


def test_collate_right_pads_and_shifts_per_token_arrays_onto_targets():
    sequences = [
        PreparedSequence([1, 5, 6], [0.0, 1.0, 2.0], [0.0, 3.0, 4.0], [0.0, -0.5, -0.25]),
        PreparedSequence([1, 7], [0.0, 1.0], [0.0, 9.0], None),
    ]
    batch = collate(sequences, pad_id=2, device=torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 2]]
    # position t of the per-token arrays belongs to target input_ids[:, t + 1]
    assert batch["weights"].tolist() == [[1.0, 2.0], [1.0, 0.0]]
    assert batch["advantages"].tolist() == [[3.0, 4.0], [9.0, 0.0]]
    assert batch["sampler_logprobs"].tolist() == [[-0.5, -0.25], [0.0, 0.0]]
    assert batch["has_sampler"].tolist() == [[True], [False]]


def test_a_right_padded_batch_scores_each_sequence_as_it_scores_alone(engine):
    """Training forwards pass no attention mask: padding after a sequence must not change its logprobs."""
    model = engine._model
    long, short = [1, *range(40, 60)], [1, *range(70, 78)]
    batch = collate([PreparedSequence(ids, [1.0] * len(ids), [0.0] * len(ids), None) for ids in (long, short)], pad_id=2, device=torch.device("cpu"))
    with torch.no_grad():
        together = sequence_logprobs(model, batch["input_ids"])
        alone = sequence_logprobs(model, torch.tensor([short]))
    assert torch.allclose(together[1, : len(short) - 1], alone[0], atol=1e-5)


def run_to_completion(engine, requests: list[EngineRequest]) -> dict[str, list[int]]:
    for request in requests:
        engine.add_request(request)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    finished: dict[str, FinishReason] = {}
    while engine.has_unfinished_requests():
        for request_id, chunk in engine.step():
            tokens[request_id].extend(chunk.token_ids)
            if chunk.finish_reason is not None:
                finished[request_id] = chunk.finish_reason
    assert set(finished) == set(tokens)
    return tokens


def request(request_id: str, prompt: tuple[int, ...], **sampling) -> EngineRequest:
    params = SamplingSpec(**{"max_tokens": 6, "ignore_eos": True, **sampling})
    return EngineRequest(request_id, 0, 0, prompt, params, adapter="")


PROMPTS = [(1, 40, 41, 42, 43, 44, 45), (1, 300), (1, 77, 78, 79)]


def test_batched_greedy_decoding_equals_decoding_each_prompt_alone(engine):
    alone = {f"p{i}": run_to_completion(engine, [request(f"p{i}", p, temperature=0.0)])[f"p{i}"] for i, p in enumerate(PROMPTS)}
    together = run_to_completion(engine, [request(f"p{i}", p, temperature=0.0) for i, p in enumerate(PROMPTS)])
    assert together == alone


def test_batched_seeded_sampling_equals_sampling_alone(engine):
    alone = run_to_completion(engine, [request("s", PROMPTS[1], seed=11)])["s"]
    together = run_to_completion(engine, [request("s", PROMPTS[1], seed=11), request("t", PROMPTS[0], seed=12)])
    assert together["s"] == alone
    assert together["t"] != alone


def test_aborted_samples_stop_and_the_rest_finish(engine):
    engine.add_request(request("keep", PROMPTS[0], temperature=0.0))
    engine.add_request(request("drop", PROMPTS[1], temperature=0.0))
    engine.step()
    engine.abort(["drop"])
    seen = set()
    while engine.has_unfinished_requests():
        seen.update(request_id for request_id, _ in engine.step())
    assert seen == {"keep"}
    assert engine.running_requests() == 0


def test_a_request_joins_a_running_batch_and_decodes_as_it_would_alone(engine):
    alone = run_to_completion(engine, [request("j", PROMPTS[0], temperature=0.0)])["j"]
    seeded_alone = run_to_completion(engine, [request("s", PROMPTS[2], seed=5)])["s"]
    long_alone = run_to_completion(engine, [request("long", PROMPTS[1], temperature=0.0, max_tokens=40)])["long"]
    engine.add_request(request("long", PROMPTS[1], temperature=0.0, max_tokens=40))
    tokens: dict[str, list[int]] = {"long": [], "j": [], "s": []}
    finished_order = []
    for step in range(200):
        if step == 3:  # the long sample is running: these join it
            engine.add_request(request("j", PROMPTS[0], temperature=0.0))
            engine.add_request(request("s", PROMPTS[2], seed=5))
        for request_id, chunk in engine.step():
            tokens[request_id].extend(chunk.token_ids)
            if chunk.finish_reason is not None:
                finished_order.append(request_id)
        if not engine.has_unfinished_requests():
            break
    assert tokens["j"] == alone and tokens["s"] == seeded_alone
    assert tokens["long"] == long_alone  # joining did not disturb the running sample
    assert finished_order[-1] == "long"  # the joiners did not wait for the long sample

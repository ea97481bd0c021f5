"""The trainer in vLLM's engine process: a worker extension over the engine's own weights.

vLLM mixes ``TandemWorkerExtension`` into its GPU worker
(``worker_extension_cls``); the front process calls its two methods through
``AsyncLLM.collective_rpc``, which the engine core runs between two engine
steps. ``tandem_build`` makes the trainer: a transformers model whose every
base weight is a view of vLLM's bnb-packed tensors (``shared_weights.py``),
PEFT's LoRA on it, the trained adapter registered and pinned in one of vLLM's
LoRA slots and synced into it in memory (``lora_buffers.py``), AdamW, and
optionally the KV-cache standby. ``tandem_call`` runs model work on it
(``model_ops.py``). vLLM is imported here only inside the engine's process
(and by the front for the names), never on CPU installs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from service.runtime import heap, model_ops
from service.runtime.compiled_training import compile_decoder_layers
from service.runtime.engines.base import BuiltModel
from service.runtime.engines.lora_buffers import LoraBufferSync, trained_lora_pairs
from service.runtime.engines.shared_weights import build_shared_causal_lm
from service.runtime.engines.worker_calls import TRAINED_LORA_ID, BuiltTrainer, run_encoded
from service.runtime.memory import tensor_bytes
from service.runtime.model import LoadedModel, assemble_loaded_model, load_tokenizer
from service.runtime.peft_model import attach_lora, eos_ids
from service.runtime.specs import EngineKind, LoadSpec

LORA_MATMUL_PRECISION = "high"
"""float32 matmuls of the engine's process on TensorFloat32 tensor cores (``torch.set_float32_matmul_precision``).

The only float32 matmuls there are the trainer's LoRA (PEFT keeps A and B in float32 and casts the bf16 input
up): 1.2 TFLOP per 8 x 512 TrainStep of the 1.1B benchmark model at rank 64, which Hopper's float32 units (67
TFLOP/s at best) would spend about 20 ms on (a count, not a measurement). TF32 keeps float32's range and accumulation and 10 mantissa bits,
more than the bf16 (7 bits) that LoRA's output is rounded to before it is added to the base layer's. vLLM's
own matmuls are bf16 and its compiled model keeps no guard on this setting, so sampling is unchanged."""


class KvStandby:
    """Unmaps and remaps the KV cache's memory (vLLM's cumem pool, tag ``kv_cache``); the weights stay put.

    vLLM's own ``sleep(level=1)`` would also move the weights to the CPU, which
    would pull them from under the trainer that shares them.
    """

    def __init__(self, model_runner) -> None:
        from vllm.device_allocator.cumem import CuMemAllocator

        self._allocator = CuMemAllocator.get_instance()
        self._model_runner = model_runner
        self.released_bytes = 0
        """Device memory freed by the last ``release`` (driver-reported)."""

    def release(self) -> None:
        """Unmap every KV-cache allocation (their contents are lost; the front salts the prefix cache anew)."""
        from vllm.device_allocator.cumem import unmap_and_release

        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        for data in self._allocator.pointer_to_data.values():
            if data.tag == "kv_cache":
                unmap_and_release(data.handle)
        self.released_bytes = torch.cuda.mem_get_info()[0] - free_before

    def restore(self) -> None:
        """Map the KV cache again at the same addresses (the CUDA graphs that use it stay valid).

        First the step's cached activations go back to the driver: the step ran in the memory the
        KV cache lent it, and PyTorch's caching allocator would otherwise keep it (15 GiB for the
        1.1B benchmark model's 8 x 512 step), so mapping the KV cache again could run out of memory."""
        torch.cuda.empty_cache()
        self._allocator.wake_up(tags=["kv_cache"])
        self._model_runner.post_kv_cache_wake_up()


class EngineSide:
    """The trainer's link to the engine in this process: in-memory adapter sync and standby."""

    def __init__(self, lora_sync: LoraBufferSync, standby: KvStandby | None, model_runner) -> None:
        self._lora_sync = lora_sync
        self.standby = standby
        self.model_runner = model_runner
        """vLLM's GPU model runner (its model, LoRA manager, KV caches)."""

    def sync_adapter(self, version: int) -> float:
        """Copy the trained adapter into its pinned LoRA slot; seconds spent."""
        return self._lora_sync.copy()

    def pause_for_training(self) -> None:
        """With standby, release the KV cache (no request is running: the front holds the barrier)."""
        if self.standby is not None:
            self.standby.release()

    def resume_after_training(self) -> None:
        """With standby, map the KV cache back."""
        if self.standby is not None:
            self.standby.restore()


class TandemWorkerExtension:
    """Mixed into vLLM's GPU worker: ``self`` is the worker, ``self.model_runner.model`` the engine's model."""

    def tandem_build(self, payload: bytes) -> bytes:
        """Build the trainer from encoded ``(spec, model_dir, compile_training)`` (``encode_build``); the reply carries a BuiltTrainer."""
        return run_encoded(payload, self, self._tandem_version, build_trainer)

    def tandem_call(self, payload: bytes) -> bytes:
        """Run encoded model work on the trainer built here."""
        return run_encoded(payload, getattr(self, "_tandem_model", None), self._tandem_version)

    def _tandem_version(self) -> int:
        loaded = getattr(self, "_tandem_model", None)
        return 0 if loaded is None else loaded.state.adapter_version


def build_trainer(worker, spec: LoadSpec, model_dir: str, compile_training: bool) -> BuiltTrainer:
    """Build the LoadedModel over the worker's vLLM model and keep it on the worker (engine process only);
    with ``compile_training`` its decoder layers train through torch.compile (``compiled_training.py``)."""
    started = time.perf_counter()
    torch.set_float32_matmul_precision(LORA_MATMUL_PRECISION)
    directory = Path(model_dir)
    runner = worker.model_runner
    device = torch.device("cuda", torch.cuda.current_device())
    dtype = worker.vllm_config.model_config.dtype  # what vLLM computes in: the trainer matches it
    tokenizer = load_tokenizer(directory)
    base = build_shared_causal_lm(directory, runner.get_model(), dtype, device)
    model = attach_lora(base, spec)
    if compile_training:
        compile_decoder_layers(model)
    pairs = list(trained_lora_pairs(model))
    adapters = runner.lora_manager._adapter_manager
    adapters.add_adapter(_vllm_lora_model(TRAINED_LORA_ID, pairs, spec, dtype))
    runner.lora_manager.pin_adapter(TRAINED_LORA_ID)
    sync = LoraBufferSync(pairs, adapters.modules, slot=adapters.lora_index_to_id.index(TRAINED_LORA_ID))
    kv_bytes = tensor_bytes(t for t in runner.kv_caches if t is not None)
    built = BuiltModel(
        model=model,
        engine=EngineSide(sync, KvStandby(runner) if spec.standby else None, runner),
        eos_token_ids=eos_ids(tokenizer, base.config),
        vocab_size=base.config.vocab_size,
        base_weight_copies=1,
        kv_cache_bytes=lambda: kv_bytes,
    )
    loaded: LoadedModel = assemble_loaded_model(spec, directory, tokenizer, EngineKind.VLLM, built, device, dtype)
    model_ops.sync_adapter(loaded)
    worker._tandem_model = loaded
    torch.cuda.empty_cache()  # give back what building the trainer used transiently
    heap.freeze_loaded()  # vLLM froze its own start-up heap; the trainer built after it joins it
    layers = base.config.num_hidden_layers
    return BuiltTrainer(built.eos_token_ids, built.vocab_size, layers, time.perf_counter() - started)


def _vllm_lora_model(lora_id: int, pairs, spec: LoadSpec, dtype: torch.dtype):
    """vLLM's LoRAModel made from the PEFT tensors (no file).

    It stays on the CPU: pinning copies it into its GPU slot once, and later
    syncs write that slot directly.
    """
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    tensors = {}
    for pair in pairs:
        tensors[f"base_model.model.{pair.name}.lora_A.weight"] = pair.a.detach()
        tensors[f"base_model.model.{pair.name}.lora_B.weight"] = pair.b.detach()
    helper = PEFTHelper.from_dict({"r": spec.lora.rank, "lora_alpha": spec.lora.alpha, "target_modules": list(spec.lora.target_modules)})
    return LoRAModel.from_lora_tensors(lora_id, tensors, helper, device="cpu", dtype=dtype)

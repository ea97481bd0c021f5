"""Model work, as functions of the loaded model, run wherever that model lives.

The transformers engine keeps the model in the server process and its device
loop runs these; with vLLM the model lives in the engine's own process and
these run there, sent by name through ``collective_rpc`` (see
``engines/worker_calls.py``). So each is a module-level function whose first
argument is the ``LoadedModel`` and whose other arguments and result pickle.
Every function here runs with no sample running (the caller holds the
ordering barrier), except ``describe``, which only reads.
"""

from __future__ import annotations

from service.runtime.adapter_slots import peft_adapter_name
from service.runtime.adapter_state import capture, restore, restore_weights
from service.runtime.checkpoints import CheckpointContents, CheckpointStore
from service.runtime.memory import device_memory
from service.runtime.model import LoadedModel
from service.runtime.specs import BASE_ADAPTER, AdapterCheckpoint, LossSpec, ModelDescription, OptimizerSpec, RestoredAdapter, TrainResult
from service.runtime.training import score_sequences, train_step
from service.runtime.validation import PreparedSequence


def sync_adapter(loaded: LoadedModel) -> float:
    """The one way the trained adapter reaches the engine: copy it in, recount memory; seconds spent."""
    seconds = loaded.engine.sync_adapter(loaded.state.adapter_version)
    loaded.refresh_memory(only_if_optimizer_grew=True)
    return seconds


def train(
    loaded: LoadedModel, sequences: list[PreparedSequence], loss: LossSpec, optimizer: OptimizerSpec, accumulate: bool, queued_at: float
) -> TrainResult:
    """One TrainStep, with the engine paused around it (standby releases the KV cache)."""
    loaded.engine.pause_for_training()
    try:
        return train_step(loaded, sequences, loss, optimizer, accumulate, queued_at, sync_adapter)
    finally:
        loaded.engine.resume_after_training()


def score(loaded: LoadedModel, sequences: list[list[int]], adapter: str, store: CheckpointStore) -> tuple[list[list[float]], int]:
    """Per-token logprobs under ``adapter`` and the adapter version they are of."""
    if adapter == BASE_ADAPTER:
        return score_sequences(loaded, sequences, adapter), 0
    if adapter == "":
        return score_sequences(loaded, sequences, adapter), loaded.state.adapter_version
    checkpoint = loaded.scorer_slots.acquire(adapter, store)
    return score_sequences(loaded, sequences, peft_adapter_name("scorer", adapter)), checkpoint.adapter_version


def save_checkpoint(loaded: LoadedModel, name: str, overwrite: bool, store: CheckpointStore) -> AdapterCheckpoint:
    """Write the trained adapter, optimizer, step and version as checkpoint ``name``, atomically."""
    if overwrite:
        loaded.scorer_slots.forget(name)  # read again from the new files on next use
    return store.write(capture(loaded, name), overwrite)


def load_checkpoint(loaded: LoadedModel, name: str, store: CheckpointStore) -> tuple[RestoredAdapter, float]:
    """Make checkpoint ``name`` the trained adapter and optimizer state; (what was restored, sync seconds)."""
    restore(loaded, store.read(name))
    seconds = sync_adapter(loaded)
    return RestoredAdapter(store.describe(name), loaded.state.adapter_version, loaded.state.step), seconds


def delete_checkpoint(loaded: LoadedModel, name: str, store: CheckpointStore) -> None:
    """Unload checkpoint ``name`` from the scorer, then delete its files."""
    loaded.scorer_slots.forget(name)
    store.delete(name)


def snapshot(loaded: LoadedModel, name: str) -> CheckpointContents:
    """The trained adapter's full state as checkpoint contents (for publishing)."""
    return capture(loaded, name)


def install(loaded: LoadedModel, contents: CheckpointContents) -> float:
    """Serve a published adapter: its LoRA weights and version become the trained adapter's; sync seconds."""
    restore_weights(loaded, contents)
    return sync_adapter(loaded)


def describe(loaded: LoadedModel) -> ModelDescription:
    """What GetModel reports (reads only)."""
    return loaded.describe()


def accelerator_memory(loaded: LoadedModel) -> tuple[int, int, int]:
    """(allocated, reserved, total) bytes on the model's device, as torch counts them where the model lives."""
    return device_memory(loaded.device)

"""LoadModel: tokenizer, 4-bit base, LoRA adapter, optimizer and engine, as one LoadedModel.

Runs on the device thread. How the base weights are obtained and which engine
samples is the backend's business (see ``engines/__init__.py``): the
transformers backend loads the base with ``from_pretrained``; the vLLM backend
lets vLLM load it and builds the trainer's layers over vLLM's tensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from service.errors import InvalidArgument
from service.runtime.engines import BuildContext, builder_for
from service.runtime.engines.base import Engine
from service.runtime.memory import base_weight_tensors, device_memory, optimizer_state_bytes, process_rss_bytes, tensor_bytes
from service.runtime.specs import DType, EngineKind, LoadPhase, LoadProgress, LoadSpec, MemoryReport, ModelDescription, OptimizerSpec
from service.runtime.validation import ModelBounds

ProgressCallback = Callable[[LoadProgress], None]

TORCH_DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16}


@dataclass
class TrainingState:
    """Counters and the gradient accumulated across TrainStep calls."""

    step: int = 0
    adapter_version: int = 0
    accumulated: list[torch.Tensor] | None = None
    micro_batches: int = 0


@dataclass
class LoadedModel:
    """Everything LoadModel made. Touched only on the device thread."""

    spec: LoadSpec
    model_dir: Path
    tokenizer: object
    model: torch.nn.Module
    """The PEFT model: 4-bit base + LoRA."""
    optimizer: torch.optim.AdamW
    trainable: list[torch.nn.Parameter]
    device: torch.device
    dtype: torch.dtype
    engine_kind: EngineKind
    engine: Engine
    bounds: ModelBounds
    eos_token_ids: tuple[int, ...]
    load_seconds: float = 0.0
    base_weight_copies: int = 1
    kv_cache_bytes: Callable[[], int] = lambda: 0
    kv_cache_usage: Callable[[], float] = lambda: 0.0
    state: TrainingState = field(default_factory=TrainingState)
    _model_memory: MemoryReport = field(default_factory=MemoryReport)
    _counted_optimizer_states: int = -1

    def refresh_memory(self, *, only_if_optimizer_grew: bool = False) -> None:
        """Recount what the model's parts take (device thread).

        With ``only_if_optimizer_grew`` (after an optimizer step) it recounts
        only when AdamW has created state since the last count: the base and
        adapter sizes never change, and the walk over every tensor is not free.
        """
        if only_if_optimizer_grew and len(self.optimizer.state) == self._counted_optimizer_states:
            return
        self._counted_optimizer_states = len(self.optimizer.state)
        self._model_memory = MemoryReport(
            base_weights_bytes=tensor_bytes(base_weight_tensors(self.model)),
            adapter_bytes=tensor_bytes(self.trainable),
            optimizer_bytes=optimizer_state_bytes(self.optimizer),
            base_weight_copies=self.base_weight_copies,
        )

    def memory(self) -> MemoryReport:
        """The last count of the model's parts, with live process and accelerator figures."""
        allocated, reserved, total = device_memory(self.device)
        return replace(
            self._model_memory,
            kv_cache_bytes=self.kv_cache_bytes(),
            device_allocated_bytes=allocated,
            device_reserved_bytes=reserved,
            device_total_bytes=total,
            process_rss_bytes=process_rss_bytes(),
        )

    def describe(self) -> ModelDescription:
        """What GetModel reports."""
        spec = self.spec
        dtype = next(d for d, t in TORCH_DTYPES.items() if t == self.dtype)
        return ModelDescription(
            model_name=spec.model_name,
            engine=self.engine_kind,
            max_seq_length=spec.max_seq_length,
            dtype=dtype,
            load_in_4bit=spec.load_in_4bit,
            vocab_size=self.bounds.vocab_size,
            eos_token_ids=self.eos_token_ids,
            lora=spec.lora,
            max_lora_rank=spec.max_lora_rank,
            gradient_checkpointing=spec.gradient_checkpointing,
            adapter_version=self.state.adapter_version,
            step=self.state.step,
            accumulated_micro_batches=self.state.micro_batches,
            device=str(self.device),
            memory=self.memory(),
            load_seconds=self.load_seconds,
            random_state=spec.random_state,
            standby=spec.standby,
        )


def pick_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(requested: DType, device: torch.device) -> torch.dtype:
    """AUTO: bf16 on a GPU that has it, else fp16 on GPU; fp32 on CPU."""
    if requested is not DType.AUTO:
        return TORCH_DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def check_load_spec(spec: LoadSpec) -> None:
    """Ranges of LoadModel's fields."""
    if not 16 <= spec.max_seq_length <= 1_048_576:
        raise InvalidArgument("max_seq_length", f"must be in [16, 1048576], got {spec.max_seq_length}")
    if not 0.0 < spec.gpu_memory_utilization <= 1.0:
        raise InvalidArgument("gpu_memory_utilization", f"must be in (0, 1], got {spec.gpu_memory_utilization}")
    if not 1 <= spec.max_lora_rank <= 512:
        raise InvalidArgument("max_lora_rank", f"must be in [1, 512], got {spec.max_lora_rank}")
    if not 1 <= spec.lora.rank <= spec.max_lora_rank:
        raise InvalidArgument("lora.rank", f"must be in [1, max_lora_rank={spec.max_lora_rank}], got {spec.lora.rank}")
    if not (0.0 < spec.lora.alpha <= 1e4):
        raise InvalidArgument("lora.alpha", f"must be in (0, 10000], got {spec.lora.alpha}")
    if not 0.0 <= spec.lora.dropout < 1.0:
        raise InvalidArgument("lora.dropout", f"must be in [0, 1), got {spec.lora.dropout}")
    if not spec.lora.target_modules:
        raise InvalidArgument("lora.target_modules", "name at least one module")
    if not 1 <= spec.max_loras <= 64:
        raise InvalidArgument("max_loras", f"must be in [1, 64], got {spec.max_loras}")
    if spec.random_state >= 2**63:
        raise InvalidArgument("random_state", f"must be below 2^63, got {spec.random_state}")


def load_tokenizer(model_dir: Path):
    """The model's tokenizer (never remote code)."""
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def load_hf_base(model_dir: Path, spec: LoadSpec, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The base model through transformers, NF4-quantized by bitsandbytes when load_in_4bit."""
    quantization = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=False)
        if spec.load_in_4bit
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, dtype=dtype, device_map={"": device}, trust_remote_code=False
    )
    _keep_cpu_weight_layout(model)
    return model


def _keep_cpu_weight_layout(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for AVX512-BF16 CPUs at the first eval forward.

    bitsandbytes 0.50 unpacks them again in ``state_dict()`` (which PEFT's
    ``load_adapter`` calls), and the next forward repacks them wrongly: every
    output changes. Keeping the plain layout makes saving and loading adapters
    leave the base model as it is, at some CPU speed.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def attach_lora(base: torch.nn.Module, spec: LoadSpec) -> torch.nn.Module:
    """Wrap the base in a PEFT LoRA model, seeded by random_state; only LoRA weights train."""
    if spec.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    config = LoraConfig(
        r=spec.lora.rank,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.random_state)
        try:
            return get_peft_model(base, config)
        except ValueError as error:  # PEFT names the modules it could not find
            raise InvalidArgument("lora.target_modules", str(error)) from None


def check_lora_targets(model_dir: Path, spec: LoadSpec) -> None:
    """Attach the LoRA to a weightless (meta-device) copy of the architecture, so target modules
    the model lacks, or cannot adapt, fail before the loaded model is released (well under a second)."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    attach_lora(skeleton, replace(spec, gradient_checkpointing=False))


def eos_ids(tokenizer, base_config) -> tuple[int, ...]:
    """End-of-sequence ids from the generation config or tokenizer."""
    configured = getattr(base_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None] or [tokenizer.eos_token_id]
    return tuple(int(i) for i in ids)


class Stopwatch:
    """Seconds since creation, for progress events."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since start."""
        return time.perf_counter() - self._start


def report(progress: ProgressCallback, clock: Stopwatch, phase: LoadPhase, message: str, done: int = 0, total: int = 0, unit: str = "") -> None:
    """Send one progress event."""
    progress(LoadProgress(phase, message, done, total, unit, clock.elapsed()))


def build_loaded_model(spec: LoadSpec, model_dir: Path, tokenizer, kind: EngineKind, progress: ProgressCallback, clock: Stopwatch) -> LoadedModel:
    """Run the engine kind's builder, add AdamW over the LoRA parameters, and account memory (device thread)."""
    device = pick_device()
    dtype = resolve_dtype(spec.dtype, device)
    context = BuildContext(spec, model_dir, tokenizer, dtype, device, lambda *a, **k: report(progress, clock, *a, **k))
    built = builder_for(kind)(context)
    trainable = [p for p in built.model.parameters() if p.requires_grad]
    loaded = LoadedModel(
        spec=spec,
        model_dir=model_dir,
        tokenizer=tokenizer,
        model=built.model,
        optimizer=torch.optim.AdamW(trainable, lr=OptimizerSpec().learning_rate),
        trainable=trainable,
        device=device,
        dtype=dtype,
        engine_kind=kind,
        engine=built.engine,
        bounds=ModelBounds(built.vocab_size, spec.max_seq_length, built.eos_token_ids[0]),
        eos_token_ids=built.eos_token_ids,
        base_weight_copies=built.base_weight_copies,
        kv_cache_usage=built.kv_cache_usage,
        kv_cache_bytes=built.kv_cache_bytes,
    )
    built.engine.sync_adapter(0)
    loaded.load_seconds = clock.elapsed()
    loaded.refresh_memory()
    return loaded

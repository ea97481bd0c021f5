"""Domain types of the runtime: what the servicer builds from protobuf messages.

Every default of the public contract lives here, once, next to the field it
belongs to. Nothing in this module imports protobuf or torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from service.config import Role

TINY_MODEL_NAME = "tandem/tiny"
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_ADAPTER = "base"
"""Adapter selector meaning "no adapter"; the empty selector means the trained one."""


class DType(enum.Enum):
    """Compute dtype; AUTO picks by device."""

    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class EngineKind(enum.Enum):
    """Sampling engine."""

    TRANSFORMERS = "transformers"
    VLLM = "vllm"


@dataclass(frozen=True)
class LoraSpec:
    """The LoRA adapter to attach."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS


@dataclass(frozen=True)
class LoadSpec:
    """LoadModel's fields with from_pretrained's defaults; fast_inference None = by device."""

    model_name: str = TINY_MODEL_NAME
    max_seq_length: int = 2048
    dtype: DType = DType.AUTO
    load_in_4bit: bool = True
    fast_inference: bool | None = None
    gpu_memory_utilization: float = 0.5
    max_lora_rank: int = 64
    float8_kv_cache: bool = False
    disable_log_stats: bool = True
    random_state: int = 3407
    lora: LoraSpec = field(default_factory=LoraSpec)
    gradient_checkpointing: bool = False
    standby: bool = False
    max_loras: int = 1
    publish_every_steps: int = 1
    """Trainer role: publish the adapter after every this many optimizer steps (and after LoadAdapter); 0 = never."""


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling parameters of one Generate call (vLLM's defaults)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    logprobs: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class PromptSpec:
    """One prompt: exactly one of text and token_ids is set."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class GenerateSpec:
    """One Generate call."""

    prompts: tuple[PromptSpec, ...]
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    adapter: str = ""
    token_ids_only: bool = False
    """Return token ids (and logprobs) only: nothing is detokenized."""
    whole_samples: bool = False
    """Yield each sample once, whole, when it finishes, instead of its tokens as they come."""
    min_adapter_version: int | None = None
    """Sample only from this adapter version or a newer one (None: any)."""
    time_remaining: float | None = None
    """Seconds until the call's deadline (None: no deadline); bounds waiting for ``min_adapter_version``."""


class FinishReason(enum.Enum):
    """Why a sample ended."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(frozen=True)
class TopLogprob:
    """One alternative token at a position."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """Logprob of one generated token, with the top alternatives when asked."""

    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class SampleChunk:
    """New output of one sample: what the engine produced since the last chunk."""

    prompt_index: int
    sample_index: int
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    adapter_version: int


class LossFunction(enum.Enum):
    """Training objective."""

    CROSS_ENTROPY = "cross_entropy"
    IMPORTANCE_SAMPLING = "importance_sampling"
    PPO_CLIP = "ppo_clip"


@dataclass(frozen=True)
class LossSpec:
    """Loss function and its parameters."""

    function: LossFunction = LossFunction.CROSS_ENTROPY
    clip_low: float = 0.2
    clip_high: float | None = None

    @property
    def resolved_clip_high(self) -> float:
        """Upper clip range; defaults to the lower one."""
        return self.clip_low if self.clip_high is None else self.clip_high


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW parameters for one step."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TrainSequenceSpec:
    """One training sequence: token ids, or prompt + completion text."""

    token_ids: tuple[int, ...] = ()
    prompt: str = ""
    completion: str = ""
    add_eos: bool = True
    loss_weights: tuple[float, ...] = ()
    advantage: float = 0.0
    advantages: tuple[float, ...] = ()
    sampler_logprobs: tuple[float, ...] = ()

    @property
    def is_text(self) -> bool:
        """True for the prompt + completion form."""
        return not self.token_ids


@dataclass(frozen=True)
class TrainSpec:
    """One TrainStep call."""

    sequences: tuple[TrainSequenceSpec, ...]
    loss: LossSpec = field(default_factory=LossSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    accumulate: bool = False


class StepOutcome(enum.Enum):
    """What a TrainStep did."""

    APPLIED = "applied"
    ACCUMULATED = "accumulated"
    SKIPPED_NONFINITE = "skipped_nonfinite"


@dataclass(frozen=True)
class PhaseSeconds:
    """Seconds spent in each phase of a TrainStep."""

    queue: float = 0.0
    prepare: float = 0.0
    forward_backward: float = 0.0
    optimizer: float = 0.0
    sync: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """What a TrainStep did and measured."""

    outcome: StepOutcome
    loss: float
    grad_norm: float
    tokens: int
    step: int
    adapter_version: int
    accumulated_micro_batches: int
    seconds: PhaseSeconds
    clip_fraction: float = 0.0
    importance_ratio_mean: float = 1.0


@dataclass(frozen=True)
class MemoryReport:
    """Where the model's memory goes, in bytes."""

    base_weights_bytes: int = 0
    adapter_bytes: int = 0
    optimizer_bytes: int = 0
    kv_cache_bytes: int = 0
    device_allocated_bytes: int = 0
    device_reserved_bytes: int = 0
    device_total_bytes: int = 0
    process_rss_bytes: int = 0
    base_weight_copies: int = 1


@dataclass(frozen=True)
class SpecialTokens:
    """The tokenizer's special token ids; None where it has no such token."""

    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    all_special_ids: tuple[int, ...] = ()
    """Every special token id, ascending."""
    has_chat_template: bool = False


@dataclass(frozen=True)
class ModelDescription:
    """What is loaded (GetModel, the end of LoadModel)."""

    model_name: str
    engine: EngineKind
    max_seq_length: int
    dtype: DType
    load_in_4bit: bool
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    lora: LoraSpec
    max_lora_rank: int
    gradient_checkpointing: bool
    adapter_version: int
    step: int
    accumulated_micro_batches: int
    device: str
    memory: MemoryReport
    load_seconds: float
    random_state: int
    standby: bool
    special_tokens: SpecialTokens = field(default_factory=SpecialTokens)
    """The tokenizer's special token ids (see :func:`service.runtime.tokenization.special_tokens`)."""
    publish_every_steps: int = 1
    """The LoadSpec's: how often a trainer publishes (see :class:`service.runtime.adapter_publishing.AdapterPublisher`)."""


@dataclass(frozen=True)
class RoleDescription:
    """This server's part in a trainer/sampler deployment (GetModel)."""

    role: Role
    trainer_address: str
    """Sampler role: where TrainStep goes; "" otherwise or when not configured."""
    published_adapter_version: int
    """Newest version in the adapter store (trainer: last written; sampler: newest seen); 0 without a store."""


class LoadPhase(enum.Enum):
    """Stages of LoadModel."""

    RESOLVE = "resolve"
    TOKENIZER = "tokenizer"
    WEIGHTS = "weights"
    ADAPTER = "adapter"
    ENGINE = "engine"
    READY = "ready"


@dataclass(frozen=True)
class LoadProgress:
    """One progress report of LoadModel."""

    phase: LoadPhase
    message: str
    done: int = 0
    total: int = 0
    unit: str = ""
    elapsed_seconds: float = 0.0


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A saved adapter checkpoint (SaveAdapter, LoadAdapter, ListAdapters)."""

    name: str
    step: int
    adapter_version: int
    rank: int
    size_bytes: int
    created_unix_seconds: float
    model_name: str


@dataclass(frozen=True)
class RestoredAdapter:
    """What LoadAdapter restored, and the adapter version and step now in use."""

    checkpoint: AdapterCheckpoint
    adapter_version: int
    step: int


# --- Tokenize / Detokenize ----------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessageSpec:
    """One turn of a conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class TokenizeInputSpec:
    """One thing to tokenize: exactly one of text and chat is set."""

    text: str | None = None
    chat: tuple[ChatMessageSpec, ...] | None = None


@dataclass(frozen=True)
class TokenizeSpec:
    """One Tokenize call."""

    inputs: tuple[TokenizeInputSpec, ...]
    add_special_tokens: bool | None = None
    """None: True for text inputs, False for chat inputs (the chat template places special tokens itself)."""
    add_generation_prompt: bool = False
    return_offsets: bool = False


@dataclass(frozen=True)
class TokenizedText:
    """The result for one Tokenize input."""

    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...] = ()
    """One half-open character span per id when offsets were asked for; (0, 0) for special tokens the tokenizer added."""
    rendered_text: str = ""
    """Chat inputs: the text the chat template rendered (what the ids encode); "" for text inputs."""


@dataclass(frozen=True)
class DetokenizeSpec:
    """One Detokenize call."""

    sequences: tuple[tuple[int, ...], ...]
    skip_special_tokens: bool = False

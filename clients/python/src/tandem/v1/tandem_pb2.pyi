from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVER_ROLE_UNSPECIFIED: _ClassVar[ServerRole]
    SERVER_ROLE_BOTH: _ClassVar[ServerRole]
    SERVER_ROLE_TRAINER: _ClassVar[ServerRole]
    SERVER_ROLE_SAMPLER: _ClassVar[ServerRole]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    D_TYPE_UNSPECIFIED: _ClassVar[DType]
    D_TYPE_FLOAT32: _ClassVar[DType]
    D_TYPE_FLOAT16: _ClassVar[DType]
    D_TYPE_BFLOAT16: _ClassVar[DType]

class EngineKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_KIND_UNSPECIFIED: _ClassVar[EngineKind]
    ENGINE_KIND_TRANSFORMERS: _ClassVar[EngineKind]
    ENGINE_KIND_VLLM: _ClassVar[EngineKind]

class LoadPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_PHASE_UNSPECIFIED: _ClassVar[LoadPhase]
    LOAD_PHASE_RESOLVE: _ClassVar[LoadPhase]
    LOAD_PHASE_TOKENIZER: _ClassVar[LoadPhase]
    LOAD_PHASE_WEIGHTS: _ClassVar[LoadPhase]
    LOAD_PHASE_ADAPTER: _ClassVar[LoadPhase]
    LOAD_PHASE_ENGINE: _ClassVar[LoadPhase]
    LOAD_PHASE_READY: _ClassVar[LoadPhase]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_ABORT: _ClassVar[FinishReason]

class LossFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOSS_FUNCTION_UNSPECIFIED: _ClassVar[LossFunction]
    LOSS_FUNCTION_CROSS_ENTROPY: _ClassVar[LossFunction]
    LOSS_FUNCTION_IMPORTANCE_SAMPLING: _ClassVar[LossFunction]
    LOSS_FUNCTION_PPO_CLIP: _ClassVar[LossFunction]

class StepOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_OUTCOME_UNSPECIFIED: _ClassVar[StepOutcome]
    STEP_OUTCOME_APPLIED: _ClassVar[StepOutcome]
    STEP_OUTCOME_ACCUMULATED: _ClassVar[StepOutcome]
    STEP_OUTCOME_SKIPPED_NONFINITE: _ClassVar[StepOutcome]
SERVER_ROLE_UNSPECIFIED: ServerRole
SERVER_ROLE_BOTH: ServerRole
SERVER_ROLE_TRAINER: ServerRole
SERVER_ROLE_SAMPLER: ServerRole
D_TYPE_UNSPECIFIED: DType
D_TYPE_FLOAT32: DType
D_TYPE_FLOAT16: DType
D_TYPE_BFLOAT16: DType
ENGINE_KIND_UNSPECIFIED: EngineKind
ENGINE_KIND_TRANSFORMERS: EngineKind
ENGINE_KIND_VLLM: EngineKind
LOAD_PHASE_UNSPECIFIED: LoadPhase
LOAD_PHASE_RESOLVE: LoadPhase
LOAD_PHASE_TOKENIZER: LoadPhase
LOAD_PHASE_WEIGHTS: LoadPhase
LOAD_PHASE_ADAPTER: LoadPhase
LOAD_PHASE_ENGINE: LoadPhase
LOAD_PHASE_READY: LoadPhase
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_ABORT: FinishReason
LOSS_FUNCTION_UNSPECIFIED: LossFunction
LOSS_FUNCTION_CROSS_ENTROPY: LossFunction
LOSS_FUNCTION_IMPORTANCE_SAMPLING: LossFunction
LOSS_FUNCTION_PPO_CLIP: LossFunction
STEP_OUTCOME_UNSPECIFIED: StepOutcome
STEP_OUTCOME_APPLIED: StepOutcome
STEP_OUTCOME_ACCUMULATED: StepOutcome
STEP_OUTCOME_SKIPPED_NONFINITE: StepOutcome

class LoraConfig(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "target_modules")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_name", "max_seq_length", "dtype", "load_in_4bit", "fast_inference", "gpu_memory_utilization", "max_lora_rank", "float8_kv_cache", "disable_log_stats", "random_state", "lora", "gradient_checkpointing", "standby", "max_loras", "publish_every_steps")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LOAD_IN_4BIT_FIELD_NUMBER: _ClassVar[int]
    FAST_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    FLOAT8_KV_CACHE_FIELD_NUMBER: _ClassVar[int]
    DISABLE_LOG_STATS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_STATE_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    MAX_LORAS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    max_seq_length: int
    dtype: DType
    load_in_4bit: bool
    fast_inference: bool
    gpu_memory_utilization: float
    max_lora_rank: int
    float8_kv_cache: bool
    disable_log_stats: bool
    random_state: int
    lora: LoraConfig
    gradient_checkpointing: bool
    standby: bool
    max_loras: int
    publish_every_steps: int
    def __init__(self, model_name: _Optional[str] = ..., max_seq_length: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., load_in_4bit: _Optional[bool] = ..., fast_inference: _Optional[bool] = ..., gpu_memory_utilization: _Optional[float] = ..., max_lora_rank: _Optional[int] = ..., float8_kv_cache: _Optional[bool] = ..., disable_log_stats: _Optional[bool] = ..., random_state: _Optional[int] = ..., lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., gradient_checkpointing: _Optional[bool] = ..., standby: _Optional[bool] = ..., max_loras: _Optional[int] = ..., publish_every_steps: _Optional[int] = ...) -> None: ...

class LoadProgress(_message.Message):
    __slots__ = ("phase", "message", "done", "total", "unit", "elapsed_seconds")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    phase: LoadPhase
    message: str
    done: int
    total: int
    unit: str
    elapsed_seconds: float
    def __init__(self, phase: _Optional[_Union[LoadPhase, str]] = ..., message: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., unit: _Optional[str] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class MemoryUsage(_message.Message):
    __slots__ = ("base_weights_bytes", "adapter_bytes", "optimizer_bytes", "kv_cache_bytes", "device_allocated_bytes", "device_reserved_bytes", "device_total_bytes", "process_rss_bytes", "base_weight_copies")
    BASE_WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROCESS_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_WEIGHT_COPIES_FIELD_NUMBER: _ClassVar[int]
    base_weights_bytes: int
    adapter_bytes: int
    optimizer_bytes: int
    kv_cache_bytes: int
    device_allocated_bytes: int
    device_reserved_bytes: int
    device_total_bytes: int
    process_rss_bytes: int
    base_weight_copies: int
    def __init__(self, base_weights_bytes: _Optional[int] = ..., adapter_bytes: _Optional[int] = ..., optimizer_bytes: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., device_allocated_bytes: _Optional[int] = ..., device_reserved_bytes: _Optional[int] = ..., device_total_bytes: _Optional[int] = ..., process_rss_bytes: _Optional[int] = ..., base_weight_copies: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "engine", "max_seq_length", "dtype", "load_in_4bit", "vocab_size", "eos_token_ids", "lora", "max_lora_rank", "gradient_checkpointing", "adapter_version", "step", "accumulated_micro_batches", "device", "memory", "load_seconds", "random_state", "standby", "special_tokens", "published_adapter_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LOAD_IN_4BIT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    MAX_LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CHECKPOINTING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RANDOM_STATE_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    engine: EngineKind
    max_seq_length: int
    dtype: DType
    load_in_4bit: bool
    vocab_size: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    lora: LoraConfig
    max_lora_rank: int
    gradient_checkpointing: bool
    adapter_version: int
    step: int
    accumulated_micro_batches: int
    device: str
    memory: MemoryUsage
    load_seconds: float
    random_state: int
    standby: bool
    special_tokens: SpecialTokens
    published_adapter_version: int
    def __init__(self, model_name: _Optional[str] = ..., engine: _Optional[_Union[EngineKind, str]] = ..., max_seq_length: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., load_in_4bit: _Optional[bool] = ..., vocab_size: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., max_lora_rank: _Optional[int] = ..., gradient_checkpointing: _Optional[bool] = ..., adapter_version: _Optional[int] = ..., step: _Optional[int] = ..., accumulated_micro_batches: _Optional[int] = ..., device: _Optional[str] = ..., memory: _Optional[_Union[MemoryUsage, _Mapping]] = ..., load_seconds: _Optional[float] = ..., random_state: _Optional[int] = ..., standby: _Optional[bool] = ..., special_tokens: _Optional[_Union[SpecialTokens, _Mapping]] = ..., published_adapter_version: _Optional[int] = ...) -> None: ...

class SpecialTokens(_message.Message):
    __slots__ = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids", "has_chat_template")
    BOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PAD_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    UNK_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_SPECIAL_IDS_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    unk_token_id: int
    all_special_ids: _containers.RepeatedScalarFieldContainer[int]
    has_chat_template: bool
    def __init__(self, bos_token_id: _Optional[int] = ..., eos_token_id: _Optional[int] = ..., pad_token_id: _Optional[int] = ..., unk_token_id: _Optional[int] = ..., all_special_ids: _Optional[_Iterable[int]] = ..., has_chat_template: _Optional[bool] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("progress", "model")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    progress: LoadProgress
    model: ModelInfo
    def __init__(self, progress: _Optional[_Union[LoadProgress, _Mapping]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("loaded", "model", "role", "trainer_address")
    LOADED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    loaded: bool
    model: ModelInfo
    role: ServerRole
    trainer_address: str
    def __init__(self, loaded: _Optional[bool] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., role: _Optional[_Union[ServerRole, str]] = ..., trainer_address: _Optional[str] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "stop_token_ids", "seed", "logprobs", "ignore_eos")
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    n: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    seed: int
    logprobs: int
    ignore_eos: bool
    def __init__(self, n: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., seed: _Optional[int] = ..., logprobs: _Optional[int] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "sampling", "adapter", "token_ids_only", "min_adapter_version", "whole_samples")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    MIN_ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    WHOLE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    sampling: SamplingParams
    adapter: str
    token_ids_only: bool
    min_adapter_version: int
    whole_samples: bool
    def __init__(self, prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., adapter: _Optional[str] = ..., token_ids_only: _Optional[bool] = ..., min_adapter_version: _Optional[int] = ..., whole_samples: _Optional[bool] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token_id", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token_id", "logprob", "top")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("prompt_index", "sample_index", "token_ids", "text", "logprobs", "finish_reason", "usage", "adapter_version")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    sample_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    finish_reason: FinishReason
    usage: Usage
    adapter_version: int
    def __init__(self, prompt_index: _Optional[int] = ..., sample_index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., adapter_version: _Optional[int] = ...) -> None: ...

class TrainSequence(_message.Message):
    __slots__ = ("token_ids", "prompt", "completion", "add_eos", "loss_weights", "advantage", "advantages", "sampler_logprobs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    ADD_EOS_FIELD_NUMBER: _ClassVar[int]
    LOSS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt: str
    completion: str
    add_eos: bool
    loss_weights: _containers.RepeatedScalarFieldContainer[float]
    advantage: float
    advantages: _containers.RepeatedScalarFieldContainer[float]
    sampler_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., prompt: _Optional[str] = ..., completion: _Optional[str] = ..., add_eos: _Optional[bool] = ..., loss_weights: _Optional[_Iterable[float]] = ..., advantage: _Optional[float] = ..., advantages: _Optional[_Iterable[float]] = ..., sampler_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class LossConfig(_message.Message):
    __slots__ = ("function", "clip_low", "clip_high")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    CLIP_LOW_FIELD_NUMBER: _ClassVar[int]
    CLIP_HIGH_FIELD_NUMBER: _ClassVar[int]
    function: LossFunction
    clip_low: float
    clip_high: float
    def __init__(self, function: _Optional[_Union[LossFunction, str]] = ..., clip_low: _Optional[float] = ..., clip_high: _Optional[float] = ...) -> None: ...

class OptimizerConfig(_message.Message):
    __slots__ = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "max_grad_norm")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    max_grad_norm: float
    def __init__(self, learning_rate: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., eps: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ...) -> None: ...

class TrainStepRequest(_message.Message):
    __slots__ = ("sequences", "loss", "optimizer", "accumulate")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATE_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[TrainSequence]
    loss: LossConfig
    optimizer: OptimizerConfig
    accumulate: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[TrainSequence, _Mapping]]] = ..., loss: _Optional[_Union[LossConfig, _Mapping]] = ..., optimizer: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., accumulate: _Optional[bool] = ...) -> None: ...

class PhaseSeconds(_message.Message):
    __slots__ = ("queue", "prepare", "forward_backward", "optimizer", "sync", "total")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_BACKWARD_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    queue: float
    prepare: float
    forward_backward: float
    optimizer: float
    sync: float
    total: float
    def __init__(self, queue: _Optional[float] = ..., prepare: _Optional[float] = ..., forward_backward: _Optional[float] = ..., optimizer: _Optional[float] = ..., sync: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class TrainStepResponse(_message.Message):
    __slots__ = ("outcome", "loss", "grad_norm", "tokens", "step", "adapter_version", "accumulated_micro_batches", "seconds", "clip_fraction", "importance_ratio_mean")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_RATIO_MEAN_FIELD_NUMBER: _ClassVar[int]
    outcome: StepOutcome
    loss: float
    grad_norm: float
    tokens: int
    step: int
    adapter_version: int
    accumulated_micro_batches: int
    seconds: PhaseSeconds
    clip_fraction: float
    importance_ratio_mean: float
    def __init__(self, outcome: _Optional[_Union[StepOutcome, str]] = ..., loss: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens: _Optional[int] = ..., step: _Optional[int] = ..., adapter_version: _Optional[int] = ..., accumulated_micro_batches: _Optional[int] = ..., seconds: _Optional[_Union[PhaseSeconds, _Mapping]] = ..., clip_fraction: _Optional[float] = ..., importance_ratio_mean: _Optional[float] = ...) -> None: ...

class ComputeLogprobsRequest(_message.Message):
    __slots__ = ("sequences", "adapter")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[TokenIds]
    adapter: str
    def __init__(self, sequences: _Optional[_Iterable[_Union[TokenIds, _Mapping]]] = ..., adapter: _Optional[str] = ...) -> None: ...

class SequenceLogprobs(_message.Message):
    __slots__ = ("logprobs",)
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class ComputeLogprobsResponse(_message.Message):
    __slots__ = ("sequences", "adapter_version")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceLogprobs]
    adapter_version: int
    def __init__(self, sequences: _Optional[_Iterable[_Union[SequenceLogprobs, _Mapping]]] = ..., adapter_version: _Optional[int] = ...) -> None: ...

class AdapterCheckpoint(_message.Message):
    __slots__ = ("name", "step", "adapter_version", "rank", "size_bytes", "created_unix_seconds", "model_name")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    step: int
    adapter_version: int
    rank: int
    size_bytes: int
    created_unix_seconds: float
    model_name: str
    def __init__(self, name: _Optional[str] = ..., step: _Optional[int] = ..., adapter_version: _Optional[int] = ..., rank: _Optional[int] = ..., size_bytes: _Optional[int] = ..., created_unix_seconds: _Optional[float] = ..., model_name: _Optional[str] = ...) -> None: ...

class SaveAdapterRequest(_message.Message):
    __slots__ = ("name", "overwrite")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    name: str
    overwrite: bool
    def __init__(self, name: _Optional[str] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class SaveAdapterResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: AdapterCheckpoint
    def __init__(self, checkpoint: _Optional[_Union[AdapterCheckpoint, _Mapping]] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("checkpoint", "adapter_version", "step")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    checkpoint: AdapterCheckpoint
    adapter_version: int
    step: int
    def __init__(self, checkpoint: _Optional[_Union[AdapterCheckpoint, _Mapping]] = ..., adapter_version: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[AdapterCheckpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[AdapterCheckpoint, _Mapping]]] = ...) -> None: ...

class DeleteAdapterRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteAdapterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Chat(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class TokenizeInput(_message.Message):
    __slots__ = ("text", "chat")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    chat: Chat
    def __init__(self, text: _Optional[str] = ..., chat: _Optional[_Union[Chat, _Mapping]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("inputs", "add_special_tokens", "add_generation_prompt", "return_offsets")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ADD_GENERATION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    RETURN_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[TokenizeInput]
    add_special_tokens: bool
    add_generation_prompt: bool
    return_offsets: bool
    def __init__(self, inputs: _Optional[_Iterable[_Union[TokenizeInput, _Mapping]]] = ..., add_special_tokens: _Optional[bool] = ..., add_generation_prompt: _Optional[bool] = ..., return_offsets: _Optional[bool] = ...) -> None: ...

class TextSpan(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class TokenizedInput(_message.Message):
    __slots__ = ("ids", "offsets", "rendered_text")
    IDS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    RENDERED_TEXT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    offsets: _containers.RepeatedCompositeFieldContainer[TextSpan]
    rendered_text: str
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., offsets: _Optional[_Iterable[_Union[TextSpan, _Mapping]]] = ..., rendered_text: _Optional[str] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TokenizedInput]
    def __init__(self, results: _Optional[_Iterable[_Union[TokenizedInput, _Mapping]]] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("sequences", "skip_special_tokens")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SKIP_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[TokenIds]
    skip_special_tokens: bool
    def __init__(self, sequences: _Optional[_Iterable[_Union[TokenIds, _Mapping]]] = ..., skip_special_tokens: _Optional[bool] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

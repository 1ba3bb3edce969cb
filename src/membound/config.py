"""Frozen, validated configuration objects.

This module is the ONLY place that reads Hugging Face ``config.json`` quirks
(explicit ``head_dim``, ``rope_scaling`` spellings, tied embeddings, per-family
attention bias and q/k norms, ``torch_dtype`` vs ``dtype``...). Everything
downstream reads plain, already-validated fields.

Values derived at run time (the number of KV blocks, say) never get patched into
these objects; they live in their own objects (see ``worker/kv_cache_alloc.py``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

# Architectures the Llama-family implementation honours, with the family flags that
# distinguish them.  ``qkv_bias`` None means "read attention_bias from the config".
_FAMILY_FLAGS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {"qkv_bias": None, "qk_norm": False},
    "MistralForCausalLM": {"qkv_bias": False, "qk_norm": False},
    "Qwen2ForCausalLM": {"qkv_bias": True, "qk_norm": False},
    "Qwen3ForCausalLM": {"qkv_bias": None, "qk_norm": True},
    # Mixture of Experts: the same decoder with a sparse MLP (MoEConfig)
    "MixtralForCausalLM": {"qkv_bias": False, "qk_norm": False},
    "Qwen2MoeForCausalLM": {"qkv_bias": True, "qk_norm": False},  # or config.json's qkv_bias
    "Qwen3MoeForCausalLM": {"qkv_bias": None, "qk_norm": True},
}
_QWEN_FAMILIES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM",
                  "Qwen3MoeForCausalLM")

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(_FAMILY_FLAGS)

_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
_ACTIVATIONS = ("silu",)
_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


class ConfigError(ValueError):
    """A configuration value membound cannot honour. The message names it and the fix."""


def normalize_dtype_name(name: str) -> str:
    """Map "bf16", "torch.bfloat16", "half"... to one of float32/float16/bfloat16."""
    key = str(name).replace("torch.", "").lower()
    if key not in _DTYPE_NAMES:
        raise ConfigError(
            f"dtype {name!r} is not supported; use one of float32, float16, bfloat16 (or 'auto')"
        )
    return _DTYPE_NAMES[key]


@dataclass(frozen=True)
class RopeScaling:
    """Rotary-embedding scaling, normalised from HF's several spellings."""

    rope_type: str  # "linear" | "dynamic" | "llama3"
    factor: float
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.rope_type not in ("linear", "dynamic", "llama3"):
            raise ConfigError(
                f"rope_scaling type {self.rope_type!r} is not supported; membound implements "
                "'linear', 'dynamic' (NTK) and 'llama3'"
            )
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise ConfigError(f"rope_scaling factor must be a positive number, got {self.factor}")
        if self.rope_type == "llama3":
            if self.original_max_position_embeddings is None:
                raise ConfigError(
                    "llama3 rope_scaling needs original_max_position_embeddings in config.json"
                )
            if self.high_freq_factor <= self.low_freq_factor:
                raise ConfigError(
                    f"llama3 rope_scaling needs high_freq_factor ({self.high_freq_factor}) > "
                    f"low_freq_factor ({self.low_freq_factor})"
                )

    @classmethod
    def from_hf(cls, raw: dict[str, Any] | None, max_position_embeddings: int) -> RopeScaling | None:
        if not raw:
            return None
        rope_type = raw.get("rope_type", raw.get("type", "default"))
        if rope_type not in _ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling type {rope_type!r} is not supported; membound implements "
                f"{', '.join(repr(t) for t in _ROPE_TYPES)}. Remove rope_scaling from "
                "config.json only if the checkpoint was not trained with it."
            )
        if rope_type == "default":
            return None
        orig = raw.get("original_max_position_embeddings")
        if rope_type == "dynamic" and orig is None:
            orig = max_position_embeddings
        return cls(
            rope_type=rope_type,
            factor=float(raw.get("factor", 1.0)),
            original_max_position_embeddings=int(orig) if orig is not None else None,
            low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
            high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
        )


# ---- quantization ---------------------------------------------------------------------------

QUANTIZATION_METHODS: tuple[str, ...] = ("fp8", "int8", "int4", "awq", "gptq", "mxfp4", "nvfp4")
# Checkpoint layouts each method loads; "float" means a float checkpoint quantized while loading.
_QUANT_FORMATS: dict[str, tuple[str, ...]] = {
    "fp8": ("float", "fp8", "compressed-tensors", "modelopt"),
    "int8": ("float", "compressed-tensors"),
    "int4": ("float",),
    "awq": ("awq",),
    "gptq": ("gptq", "gptq_v2"),
    "mxfp4": ("float", "mxfp4"),
    "nvfp4": ("float", "modelopt"),
}
_WEIGHT_ONLY = ("int4", "awq", "gptq", "mxfp4", "nvfp4")
_DEFAULT_GROUP = {"int4": 128, "awq": 128, "gptq": 128, "mxfp4": 32, "nvfp4": 16}


@dataclass(frozen=True)
class QuantizationConfig:
    """How the decoder's linear layers are stored, parsed once from ``quantization_config``
    (or made for ``quantization=`` on a float checkpoint). Embeddings, lm_head, norms and
    biases always stay in the model dtype. See docs/quantization.md for every layout."""

    method: str  # one of QUANTIZATION_METHODS
    checkpoint_format: str = "float"  # the layout on disk; "float": quantize while loading
    group_size: int | None = None  # input elements per scale; None: one per output channel
    activation_scheme: str = "dynamic"  # "dynamic" per-token | "static" input_scale | "none"
    desc_act: bool = False  # GPTQ act-order: g_idx permutes the input rows
    ignored: tuple[str, ...] = ()  # modules left unquantized (names, globs or "re:" regexes)

    def __post_init__(self) -> None:
        if self.method not in QUANTIZATION_METHODS:
            raise ConfigError(
                f"quantization {self.method!r} is not supported; use one of "
                f"{', '.join(QUANTIZATION_METHODS)}"
            )
        formats = _QUANT_FORMATS[self.method]
        if self.checkpoint_format not in formats:
            raise ConfigError(
                f"{self.method} loads checkpoints in the {', '.join(formats)} layouts, "
                f"not {self.checkpoint_format!r}"
            )
        schemes = ("none",) if self.method in _WEIGHT_ONLY else ("dynamic", "static")
        if self.activation_scheme not in schemes:
            raise ConfigError(
                f"{self.method} activation_scheme must be one of {schemes}, got "
                f"{self.activation_scheme!r}"
            )
        g = self.group_size
        if self.method in ("mxfp4", "nvfp4") and g != _DEFAULT_GROUP[self.method]:
            raise ConfigError(
                f"{self.method} uses blocks of {_DEFAULT_GROUP[self.method]} elements, got "
                f"group_size={g}"
            )
        if self.method in ("fp8", "int8") and g is not None:
            raise ConfigError(f"{self.method} scales are per channel; group_size={g} is not used")
        if g is not None and (not isinstance(g, int) or g <= 0 or g % 8 != 0):
            raise ConfigError(f"group_size must be a positive multiple of 8 (or -1), got {g!r}")

    @property
    def prequantized(self) -> bool:
        return self.checkpoint_format != "float"

    def is_ignored(self, module_name: str) -> bool:
        """True if ``module_name`` (a checkpoint module such as model.layers.0.mlp.up_proj)
        stays unquantized: an exact or dotted-component match, a glob, or an "re:" regex."""
        padded = f".{module_name}."
        for pattern in self.ignored:
            if pattern.startswith("re:"):
                if re.match(pattern[3:], module_name):
                    return True
            elif any(c in pattern for c in "*?["):
                if fnmatch.fnmatchcase(module_name, pattern) or fnmatch.fnmatchcase(
                    module_name, pattern + ".*"
                ):
                    return True
            elif f".{pattern}." in padded:
                return True
        return False

    @classmethod
    def for_float_checkpoint(cls, method: str) -> QuantizationConfig:
        """``quantization=method`` on an unquantized checkpoint: quantize while loading."""
        if method in ("awq", "gptq"):
            raise ConfigError(
                f"quantization={method!r} loads pre-quantized {method.upper()} checkpoints and "
                "this checkpoint is not quantized; use quantization='int4' to quantize it "
                "group-wise (round to nearest) while loading"
            )
        weight_only = method in _WEIGHT_ONLY
        return cls(method, "float", _DEFAULT_GROUP.get(method),
                   "none" if weight_only else "dynamic")

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> QuantizationConfig:
        """Parse a checkpoint's ``quantization_config``; unsupported schemes raise."""
        method = str(raw.get("quant_method", "")).lower()
        parsers = {
            "fp8": _parse_fp8, "awq": _parse_awq, "gptq": _parse_gptq, "mxfp4": _parse_mxfp4,
            "compressed-tensors": _parse_compressed_tensors, "modelopt": _parse_modelopt,
        }
        if method not in parsers:
            raise ConfigError(
                f"this checkpoint is quantized with quant_method={method or '?'!r}, which "
                "membound does not support; it loads fp8, compressed-tensors (FP8/INT8 W8A8), "
                "awq (GEMM), gptq, modelopt (FP8/NVFP4) and mxfp4 checkpoints"
            )
        return parsers[method](raw)


def resolve_quantization(
    checkpoint: QuantizationConfig | None, requested: str | None
) -> QuantizationConfig | None:
    """The quantization to run: the checkpoint's, or ``requested`` applied while loading."""
    if requested is None:
        return checkpoint
    requested = requested.lower()
    if requested not in QUANTIZATION_METHODS:
        raise ConfigError(
            f"quantization {requested!r} is not supported; use one of "
            f"{', '.join(QUANTIZATION_METHODS)} (or leave it unset for the checkpoint's own)"
        )
    if checkpoint is None:
        return QuantizationConfig.for_float_checkpoint(requested)
    if checkpoint.method != requested:
        raise ConfigError(
            f"this checkpoint is already quantized ({checkpoint.method}, "
            f"{checkpoint.checkpoint_format} layout) and cannot be re-quantized to "
            f"{requested}; leave quantization unset or pass {checkpoint.method!r}"
        )
    return checkpoint


def _names(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(str(v) for v in (value if isinstance(value, list) else [value]))


def _group(raw: dict[str, Any], *keys: str, default: int = 128) -> int | None:
    value = next((raw[k] for k in keys if raw.get(k) is not None), default)
    return None if int(value) == -1 else int(value)


def _bits(raw: dict[str, Any], method: str, *keys: str) -> None:
    bits = next((raw[k] for k in keys if raw.get(k) is not None), 4)
    if int(bits) != 4:
        raise ConfigError(f"{method} with bits={bits} is not supported; membound loads 4-bit only")


def _parse_fp8(raw: dict[str, Any]) -> QuantizationConfig:
    if raw.get("weight_block_size"):
        raise ConfigError(
            f"FP8 with block-wise weight scales (weight_block_size={raw['weight_block_size']}) "
            "is not supported yet; per-tensor and per-channel scales are"
        )
    return QuantizationConfig("fp8", "fp8", None, str(raw.get("activation_scheme", "dynamic")),
                              ignored=_names(raw.get("ignored_layers")))


def _parse_awq(raw: dict[str, Any]) -> QuantizationConfig:
    _bits(raw, "awq", "bits", "w_bit")
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise ConfigError(
            f"AWQ version {version!r} is not supported; membound loads the GEMM layout "
            "(AutoAWQ version='gemm')"
        )
    if not raw.get("zero_point", True):
        raise ConfigError("AWQ with zero_point=false is not supported (GEMM checkpoints have zeros)")
    return QuantizationConfig("awq", "awq", _group(raw, "group_size", "q_group_size"), "none",
                              ignored=_names(raw.get("modules_to_not_convert")))


def _parse_gptq(raw: dict[str, Any]) -> QuantizationConfig:
    _bits(raw, "gptq", "bits")
    fmt = str(raw.get("checkpoint_format") or raw.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ConfigError(
            f"GPTQ checkpoint_format {fmt!r} is not supported; membound loads 'gptq' (zero "
            "points stored minus one) and 'gptq_v2' (zero points stored as is)"
        )
    if raw.get("dynamic"):
        raise ConfigError("GPTQ per-module 'dynamic' overrides are not supported")
    return QuantizationConfig("gptq", fmt, _group(raw, "group_size"), "none",
                              bool(raw.get("desc_act", False)),
                              _names(raw.get("modules_to_not_convert")))


def _parse_mxfp4(raw: dict[str, Any]) -> QuantizationConfig:
    return QuantizationConfig("mxfp4", "mxfp4", 32, "none",
                              ignored=_names(raw.get("modules_to_not_convert")))


def _parse_modelopt(raw: dict[str, Any]) -> QuantizationConfig:
    raw = {**raw, **raw.get("quantization", {})}  # hf_quant_config.json nests it
    algo = str(raw.get("quant_algo", "")).upper()
    ignored = _names(raw.get("exclude_modules") or raw.get("ignore"))
    if algo == "FP8":
        return QuantizationConfig("fp8", "modelopt", None, "static", ignored=ignored)
    if algo == "NVFP4":
        return QuantizationConfig("nvfp4", "modelopt", _group(raw, "group_size", default=16),
                                  "none", ignored=ignored)
    raise ConfigError(f"modelopt quant_algo {algo!r} is not supported; use FP8 or NVFP4")


def _parse_compressed_tensors(raw: dict[str, Any]) -> QuantizationConfig:
    groups = raw.get("config_groups") or {}
    if len(groups) != 1:
        raise ConfigError(
            f"compressed-tensors with {len(groups)} config groups is not supported (one only)"
        )
    group = next(iter(groups.values()))
    w, act = group.get("weights") or {}, group.get("input_activations")
    kind = (w.get("num_bits"), w.get("type"), w.get("strategy"))
    methods: dict[tuple[Any, Any], str] = {(8, "float"): "fp8", (8, "int"): "int8"}
    method = methods.get(kind[:2])
    if method is None or kind[2] not in ("tensor", "channel") or not w.get("symmetric", True):
        raise ConfigError(
            f"compressed-tensors weights {kind[0]}-bit {kind[1]} strategy={kind[2]} "
            f"(format {raw.get('format')!r}) are not supported; membound loads symmetric "
            "per-tensor or per-channel FP8 and INT8 (W8A8)"
        )
    scheme = "static" if act and not act.get("dynamic", True) else "dynamic"
    return QuantizationConfig(method, "compressed-tensors", None, scheme,
                              ignored=_names(raw.get("ignore")))


@dataclass(frozen=True)
class MoEConfig:
    """The sparse MLP of a Mixture-of-Experts decoder (Mixtral, Qwen2-MoE, Qwen3-MoE).

    Each token goes to ``num_experts_per_tok`` of ``num_experts`` experts chosen by a softmax
    router; ``renormalize`` rescales the chosen weights to sum to 1 (Mixtral always, which is
    a softmax over the top-k logits; Qwen when ``norm_topk_prob``). Layers not listed in
    ``moe_layers`` keep a dense MLP of ``ModelConfig.intermediate_size``. Qwen2-MoE adds a
    shared expert to every sparse layer, scaled by ``sigmoid(shared_expert_gate(x))``.
    """

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    renormalize: bool
    moe_layers: tuple[int, ...]
    shared_expert_intermediate_size: int = 0  # 0: no shared expert
    shared_expert_gate: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in "
                f"[1, num_experts={self.num_experts}]"
            )
        if self.moe_intermediate_size <= 0:
            raise ConfigError(
                f"moe_intermediate_size must be positive, got {self.moe_intermediate_size}"
            )
        if self.shared_expert_intermediate_size < 0:
            raise ConfigError("shared_expert_intermediate_size must be >= 0")

    @classmethod
    def from_hf(cls, arch: str, raw: dict[str, Any], num_layers: int) -> MoEConfig | None:
        """None for dense architectures; HF's defaults where Qwen configs leave keys out."""
        if arch == "MixtralForCausalLM":
            return cls(_req(raw, "num_local_experts"), _req(raw, "num_experts_per_tok"),
                       _req(raw, "intermediate_size"), True, tuple(range(num_layers)))
        if arch not in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
            return None
        experts = raw.get("num_experts", raw.get("num_local_experts"))
        if experts is None:
            raise ConfigError(f"{arch} config.json has no num_experts")
        step = int(raw.get("decoder_sparse_step") or 1)
        dense = set(raw.get("mlp_only_layers") or ())
        layers = tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)
        shared = _req(raw, "shared_expert_intermediate_size") if "Qwen2" in arch else 0
        return cls(int(experts), _req(raw, "num_experts_per_tok"),
                   _req(raw, "moe_intermediate_size"), bool(raw.get("norm_topk_prob", False)),
                   layers, shared, shared > 0)


def _req(raw: dict[str, Any], key: str) -> int:
    if raw.get(key) is None:
        raise ConfigError(f"config.json has no {key}, which this architecture needs")
    return int(raw[key])


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and flags of one Llama-family checkpoint."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"
    torch_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = "llama"
    quantization: QuantizationConfig | None = None  # the checkpoint's (or the requested) one
    moe: MoEConfig | None = None  # Mixture-of-Experts MLPs (None: dense)

    def __post_init__(self) -> None:
        if self.architecture not in _FAMILY_FLAGS:
            raise ConfigError(
                f"architecture {self.architecture!r} is not supported; membound serves "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not supported; Llama-family models use 'silu'"
            )
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window must be positive or null, got {self.sliding_window}")
        if not (self.rms_norm_eps > 0):
            raise ConfigError(f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if not (self.rope_theta > 0):
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        normalize_dtype_name(self.torch_dtype)
        if self.moe is not None and self.quantization is not None:
            raise ConfigError(
                f"quantization ({self.quantization.method}) of Mixture-of-Experts models is not "
                f"supported yet ({self.architecture}: the experts load float weights only)"
            )

    # ---- derived sizes -------------------------------------------------------------
    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V for one token across all layers: 2 x layers x kv_heads x head_dim x bytes."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    @property
    def max_supported_len(self) -> int:
        """Longest context the position encoding was configured for.

        "linear" and "dynamic" rope scaling stretch ``max_position_embeddings`` by their factor
        (vLLM's and HF's reading); "llama3" configs already state the stretched length.
        """
        rs = self.rope_scaling
        if rs is not None and rs.rope_type in ("linear", "dynamic"):
            return int(self.max_position_embeddings * rs.factor)
        return self.max_position_embeddings

    # ---- construction --------------------------------------------------------------
    @classmethod
    def from_hf(cls, path: str | os.PathLike[str]) -> ModelConfig:
        """Read ``config.json`` from a checkpoint folder (or the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ConfigError(
                f"no config.json at {file}; point membound at a Hugging Face checkpoint folder"
            )
        with open(file, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{file} is not valid JSON: {e}") from e
        gen_file = os.path.join(os.path.dirname(file), "generation_config.json")
        gen: dict[str, Any] = {}
        if os.path.isfile(gen_file):
            with open(gen_file, encoding="utf-8") as f:
                gen = json.load(f)
        modelopt = os.path.join(os.path.dirname(file), "hf_quant_config.json")
        if not raw.get("quantization_config") and os.path.isfile(modelopt):
            with open(modelopt, encoding="utf-8") as f:  # ModelOpt exports put it here
                raw = {**raw, "quantization_config": {"quant_method": "modelopt", **json.load(f)}}
        return cls.from_dict(raw, generation_config=gen)

    @classmethod
    def from_dict(
        cls, raw: dict[str, Any], generation_config: dict[str, Any] | None = None
    ) -> ModelConfig:
        archs = raw.get("architectures") or []
        if not archs:
            raise ConfigError(
                "config.json has no 'architectures' entry; membound needs it to pick the model "
                f"code (one of {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        arch = archs[0]
        if arch not in _FAMILY_FLAGS:
            raise ConfigError(
                f"architecture {arch!r} is not supported; membound serves "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        qraw = raw.get("quantization_config")
        quantization = QuantizationConfig.from_hf(qraw) if qraw else None
        flags = _FAMILY_FLAGS[arch]
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        head_dim = raw.get("head_dim")
        if head_dim is None:
            if hidden % heads != 0:
                raise ConfigError(
                    f"hidden_size ({hidden}) is not divisible by num_attention_heads ({heads}) "
                    "and config.json gives no explicit head_dim"
                )
            head_dim = hidden // heads
        partial = raw.get("partial_rotary_factor", 1.0)
        if partial not in (None, 1, 1.0):
            raise ConfigError(f"partial_rotary_factor={partial} is not supported (only 1.0)")
        max_pos = int(raw.get("max_position_embeddings", 2048))
        rope_theta = raw.get("rope_theta")
        rope_scaling_raw = raw.get("rope_scaling")
        rope_params = raw.get("rope_parameters")  # newer transformers spelling
        if isinstance(rope_params, dict):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_scaling_raw is None and rope_params.get("rope_type", "default") != "default":
                rope_scaling_raw = rope_params
        qkv_bias = flags["qkv_bias"]
        if qkv_bias is None:
            qkv_bias = bool(raw.get("attention_bias", False))
        elif arch == "Qwen2MoeForCausalLM":
            qkv_bias = bool(raw.get("qkv_bias", True))
        o_bias = bool(raw.get("attention_bias", False)) if arch == "LlamaForCausalLM" else False
        sliding_window = cls._sliding_window(arch, raw)
        dtype = raw.get("torch_dtype") or raw.get("dtype") or "float32"
        eos = _collect_eos(raw, generation_config or {})
        bos = (generation_config or {}).get("bos_token_id", raw.get("bos_token_id"))
        return cls(
            architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            rope_scaling=RopeScaling.from_hf(rope_scaling_raw, max_pos),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=bool(qkv_bias),
            o_bias=o_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=bool(flags["qk_norm"]),
            sliding_window=sliding_window,
            hidden_act=str(raw.get("hidden_act", "silu")),
            torch_dtype=normalize_dtype_name(dtype),
            bos_token_id=int(bos) if isinstance(bos, int) else None,
            eos_token_ids=eos,
            model_type=str(raw.get("model_type", "llama")),
            quantization=quantization,
            moe=MoEConfig.from_hf(arch, raw, int(raw["num_hidden_layers"])),
        )

    @staticmethod
    def _sliding_window(arch: str, raw: dict[str, Any]) -> int | None:
        window = raw.get("sliding_window")
        if arch in _QWEN_FAMILIES:
            # Qwen configs carry a sliding_window value that only applies when
            # use_sliding_window is true, and then only to some layers.
            if raw.get("use_sliding_window", False):
                raise ConfigError(
                    f"{arch} with use_sliding_window=true (per-layer sliding windows) is not "
                    "supported; set use_sliding_window to false if the checkpoint allows it"
                )
            return None
        layer_types = raw.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            if len(set(layer_types)) > 1:
                raise ConfigError(
                    f"mixed layer_types {sorted(set(layer_types))} are not supported; "
                    "membound applies one attention pattern to every layer"
                )
        if arch == "LlamaForCausalLM":
            return None
        return int(window) if window else None


def _collect_eos(raw: dict[str, Any], gen: dict[str, Any]) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (gen.get("eos_token_id"), raw.get("eos_token_id")):
        if source is None:
            continue
        for i in source if isinstance(source, list) else [source]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return tuple(ids)


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache shape and budget."""

    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None  # explicit KV budget (bytes); overrides utilisation
    num_kv_blocks: int | None = None  # explicit block count (tests, debugging)
    cpu_kv_cache_default_bytes: int = 2 * 1024**3
    enable_prefix_caching: bool = True
    prefix_cache_salt: str | None = None  # per-deployment salt for block hashes
    swap_space: float = 4.0  # GiB of CPU memory for swapped-out KV blocks (swap preemption)
    kv_cache_dtype: str = "auto"  # "auto": the model dtype (FP8 KV is not supported yet)

    def __post_init__(self) -> None:
        if self.kv_cache_dtype != "auto":
            fp8 = self.kv_cache_dtype.lower().startswith("fp8")
            raise ConfigError(
                f"kv_cache_dtype={self.kv_cache_dtype!r} is not supported yet"
                + ("; FP8 KV cache needs the attention kernels to read E4M3 K/V with scales"
                   if fp8 else "") + "; use 'auto' (the model dtype)"
            )
        if not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ConfigError(f"block_size must be a positive integer, got {self.block_size!r}")
        if not (0.0 < self.gpu_memory_utilization <= 1.0):
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ConfigError(
                f"kv_cache_memory_bytes must be positive, got {self.kv_cache_memory_bytes}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if not (self.swap_space >= 0 and math.isfinite(self.swap_space)):
            raise ConfigError(f"swap_space must be a number of GiB >= 0, got {self.swap_space}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous-batching limits."""

    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_chunked_prefill: bool = True
    preemption_mode: str = "recompute"  # "recompute" | "swap"

    def __post_init__(self) -> None:
        if self.preemption_mode not in ("recompute", "swap"):
            raise ConfigError(
                f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than "
                f"max_model_len ({self.max_model_len}) with chunked prefill disabled, so long "
                "prompts could never be scheduled; raise max_num_batched_tokens or enable "
                "chunked prefill"
            )

    @classmethod
    def create(
        cls,
        max_model_len: int,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        enable_chunked_prefill: bool = True,
        preemption_mode: str = "recompute",
    ) -> SchedulerConfig:
        if max_num_batched_tokens is None:
            max_num_batched_tokens = 2048 if enable_chunked_prefill else max(2048, max_model_len)
        return cls(
            max_model_len, max_num_seqs, max_num_batched_tokens, enable_chunked_prefill,
            preemption_mode,
        )


@dataclass(frozen=True)
class KernelConfig:
    """Data plane: which kernels run, and CUDA graphs for decode steps."""

    # "auto" (Triton on CUDA, "cpu" elsewhere) | "cpu" | "torch" (the references) | "triton"
    backend: str = "auto"
    enforce_eager: bool = False  # never capture CUDA graphs
    # decode batch sizes captured as CUDA graphs; None = 1, 2, 4, 8, 16, ..., 256 (<= max_num_seqs)
    cuda_graph_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "cpu", "torch", "triton"):
            raise ConfigError(
                f"kernel backend {self.backend!r} is not supported; use 'auto', 'cpu', 'torch' "
                "or 'triton'"
            )
        if self.cuda_graph_sizes is None:
            return
        sizes = tuple(self.cuda_graph_sizes)
        bad = [s for s in sizes if not isinstance(s, int) or isinstance(s, bool) or s < 1]
        if bad or not sizes:
            raise ConfigError(
                f"cuda_graph_sizes must be positive integers, got {list(self.cuda_graph_sizes)}"
            )
        object.__setattr__(self, "cuda_graph_sizes", tuple(sorted(set(sizes))))


def check_tensor_parallel(
    tp: int, num_attention_heads: int, num_key_value_heads: int, widths: dict[str, int]
) -> None:
    """Raise a ConfigError naming the value ``tp`` ranks cannot split evenly: attention heads;
    KV heads (or, once TP exceeds them, TP must be a multiple of them: each is then replicated
    on TP / KV heads ranks); and each MLP width in ``widths``. The planner asks the same."""
    if num_attention_heads % tp:
        raise ConfigError(
            f"tensor_parallel_size={tp} must divide num_attention_heads={num_attention_heads}"
        )
    kv = num_key_value_heads
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        raise ConfigError(
            f"tensor_parallel_size={tp} must divide num_key_value_heads={kv} or be a multiple "
            "of it (KV heads are then replicated)"
        )
    for name, value in widths.items():
        if value % tp:
            raise ConfigError(f"tensor_parallel_size={tp} must divide {name}={value}")


@dataclass(frozen=True)
class ParallelConfig:
    """Tensor parallelism (and expert parallelism under it). See docs/parallelism.md.

    ``distributed_timeout_s`` bounds every collective of a step (a rank that hangs makes the
    others fail after it); a rank that dies is noticed at once (its sockets close).
    """

    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False  # MoE: whole experts per rank instead of slices
    distributed_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        tp = self.tensor_parallel_size
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise ConfigError(f"tensor_parallel_size must be a positive integer, got {tp!r}")
        if not (self.distributed_timeout_s > 0 and math.isfinite(self.distributed_timeout_s)):
            raise ConfigError(
                f"distributed_timeout_s must be a positive number, got {self.distributed_timeout_s}"
            )

    def verify_with_model(self, model: ModelConfig) -> None:
        """Raise a ConfigError naming the values when ``model`` cannot be split this way."""
        tp = self.tensor_parallel_size
        moe = model.moe
        if self.enable_expert_parallel and moe is None:
            raise ConfigError(
                f"enable_expert_parallel needs a Mixture-of-Experts model; {model.architecture} "
                "is dense"
            )
        if tp == 1:
            return
        widths = {"intermediate_size": model.intermediate_size}
        if moe is not None:
            if len(moe.moe_layers) == model.num_hidden_layers:
                widths = {}  # no dense MLP anywhere
            if moe.shared_expert_intermediate_size:
                widths["shared_expert_intermediate_size"] = moe.shared_expert_intermediate_size
            if self.enable_expert_parallel:
                widths["num_experts (expert parallel)"] = moe.num_experts
            else:
                widths["moe_intermediate_size"] = moe.moe_intermediate_size
        check_tensor_parallel(tp, model.num_attention_heads, model.num_key_value_heads, widths)
        if model.quantization is not None:
            raise ConfigError(
                f"tensor parallelism of quantized models ({model.quantization.method}) is not "
                "supported yet; run the float checkpoint with tensor_parallel_size > 1, or the "
                "quantized one with tensor_parallel_size=1"
            )


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs, validated together."""

    model: str
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    tokenizer: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    load_format: str = "auto"
    seed: int = 0
    cpu_offload_gb: float = 0.0
    kernel_config: KernelConfig = field(default_factory=KernelConfig)
    quantization: str | None = None  # the method running (model_config.quantization's)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)

    def __post_init__(self) -> None:
        self.parallel_config.verify_with_model(self.model_config)
        mq = self.model_config.quantization
        if self.quantization is None and mq is not None:
            object.__setattr__(self, "quantization", mq.method)
        if self.quantization != (mq.method if mq is not None else None):
            raise ConfigError(
                f"quantization={self.quantization!r} does not match the model config's "
                f"({mq.method if mq else None!r}); build the model config with "
                "resolve_quantization (EngineArgs does)"
            )
        if not (self.cpu_offload_gb >= 0 and math.isfinite(self.cpu_offload_gb)):
            raise ConfigError(f"cpu_offload_gb must be >= 0, got {self.cpu_offload_gb}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ConfigError(
                f"load_format {self.load_format!r} is not supported; use 'auto', "
                "'safetensors' or 'dummy' (random weights)"
            )
        normalize_dtype_name(self.dtype)
        if self.scheduler_config.max_model_len > self.model_config.max_supported_len:
            raise ConfigError(
                f"max_model_len={self.scheduler_config.max_model_len} is longer than the model's "
                f"max_position_embeddings ({self.model_config.max_supported_len}); lower "
                "max_model_len"
            )


_GENERATION_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_defaults(path: str | os.PathLike[str]) -> dict[str, float | int]:
    """Sampling defaults a checkpoint recommends in generation_config.json (temperature,
    top_p, top_k, min_p, repetition_penalty), as SamplingParams keywords. ``do_sample``
    false means greedy."""
    file = os.path.join(os.fspath(path), "generation_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file} is not valid JSON: {e}") from e
    if raw.get("do_sample") is False:
        return {"temperature": 0.0}
    return {k: raw[k] for k in _GENERATION_DEFAULT_KEYS if isinstance(raw.get(k), (int, float))}

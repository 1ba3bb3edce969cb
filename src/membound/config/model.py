"""ModelConfig (with RopeScaling and MoEConfig): the shapes and flags of one checkpoint.

This module (with quantization.py for ``quantization_config``) is the ONLY place that
reads Hugging Face ``config.json`` quirks (explicit ``head_dim``, ``rope_scaling``
spellings, tied embeddings, per-family attention bias and q/k norms, ``torch_dtype`` vs
``dtype``...). Everything downstream reads plain, already-validated fields.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from membound.config.errors import ConfigError, normalize_dtype_name
from membound.config.quantization import QuantizationConfig

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
    def from_gguf(cls, file: Any, *, dequantize: bool = False) -> ModelConfig:
        """Read a GGUF file's metadata and tensor table (``file``: a path or an open
        ``membound.gguf.reader.GGUFFile``); see config/gguf.py. Its Q4_0/Q4_1/Q4_K linears
        stay int4 in memory (``quantization`` "gguf") unless ``dequantize``."""
        from membound.config.gguf import gguf_model_fields
        from membound.gguf.reader import GGUFFile

        opened = file if isinstance(file, GGUFFile) else GGUFFile(file)
        return cls(**gguf_model_fields(opened, dequantize))

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

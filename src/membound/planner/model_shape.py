"""ModelShape: the few numbers the planner needs, read from any HF ``config.json``.

Llama-family configs (Llama, Mistral, Qwen2, Qwen3) go through the engine's own
``membound.config.ModelConfig.from_dict`` so the planner and the engine agree on
``head_dim``, tied embeddings and biases. Other families are read here, shape only:
Mixtral and Qwen-MoE experts (``num_local_experts`` / ``num_experts``,
``num_experts_per_tok``, ``moe_intermediate_size``, shared experts,
``decoder_sparse_step``, ``mlp_only_layers``), Falcon (parallel attention, non-gated
GELU MLP, multi-query / ``new_decoder_architecture`` / ``num_kv_heads``, LayerNorms with
bias) and plain GPT-style configs. Rope details, activations and the like do not change
bytes or FLOPs and are ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from membound.config import SUPPORTED_ARCHITECTURES, ConfigError, ModelConfig
from membound.planner.errors import PlannerError, read_json_object

# Families whose MLP is a plain up -> activation -> down (two matrices, no gate).
_NON_GATED_TYPES = {"falcon", "gpt2", "gpt_neox", "gptj", "opt", "bloom", "gpt_bigcode", "phi"}
# Families whose HF config class leaves tie_word_embeddings at PretrainedConfig's True.
_TIED_BY_DEFAULT = {"falcon", "gpt2", "gpt_bigcode", "opt", "bloom"}
# Keys the engine's ModelConfig rejects that do not matter to the planner.
_PLANNER_IRRELEVANT = ("quantization_config", "rope_scaling", "rope_parameters",
                       "partial_rotary_factor", "hidden_act")  # fmt: skip


@dataclass(frozen=True)
class ModelShape:
    """Shape of one decoder-only transformer, as far as bytes and FLOPs go."""

    name: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int  # dense-MLP width (used by layers that are not MoE)
    gated_mlp: bool = True
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    num_moe_layers: int = 0
    shared_expert_intermediate_size: int = 0  # total width of shared expert(s) per MoE layer
    shared_expert_gate: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    layernorm_bias: bool = False  # LayerNorm (weight + bias) instead of RMSNorm
    norms_per_layer: int = 2
    tie_word_embeddings: bool = False
    parallel_attention: bool = False
    sliding_window: int | None = None
    num_sliding_layers: int = 0
    max_position_embeddings: int = 4096
    checkpoint_precision: str | None = None  # from quantization_config, if any

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
                      "head_dim", "vocab_size", "max_position_embeddings"):  # fmt: skip
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise PlannerError(
                    f"{self.name}: {field} must be a positive integer, got {value!r}"
                )
        if self.num_attention_heads % self.num_kv_heads:
            raise PlannerError(
                f"{self.name}: num_attention_heads ({self.num_attention_heads}) is not a "
                f"multiple of the number of KV heads ({self.num_kv_heads})"
            )
        if not 0 <= self.num_moe_layers <= self.num_layers:
            raise PlannerError(f"{self.name}: num_moe_layers must be in [0, num_layers]")
        if self.num_moe_layers and not (0 < self.num_experts_per_tok <= self.num_experts):
            raise PlannerError(
                f"{self.name}: MoE needs 0 < num_experts_per_tok ({self.num_experts_per_tok}) "
                f"<= num_experts ({self.num_experts})"
            )
        if self.num_moe_layers and self.moe_intermediate_size <= 0:
            raise PlannerError(f"{self.name}: MoE layers need a positive moe_intermediate_size")
        if self.num_dense_layers and self.intermediate_size <= 0:
            raise PlannerError(f"{self.name}: intermediate_size must be positive")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise PlannerError(f"{self.name}: sliding_window must be positive or null")
        if not 0 <= self.num_sliding_layers <= self.num_layers:
            raise PlannerError(f"{self.name}: num_sliding_layers must be in [0, num_layers]")

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def is_moe(self) -> bool:
        return self.num_moe_layers > 0

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], name: str = "model") -> ModelShape:
        """Parse a Hugging Face ``config.json`` dict of any supported family."""
        if not isinstance(raw, dict):
            raise PlannerError(f"{name}: config must be a JSON object")
        if "hidden_size" not in raw and isinstance(raw.get("text_config"), dict):
            raw = {**raw["text_config"], "architectures": raw.get("architectures")}
        if "kv_lora_rank" in raw:
            raise PlannerError(
                f"{name}: multi-head latent attention (DeepSeek-V2/V3 kv_lora_rank) is not "
                "modelled by the planner; its KV cache is not 2 x kv_heads x head_dim"
            )
        archs = raw.get("architectures") or [""]
        arch = str(archs[0] or raw.get("model_type", "unknown"))
        checkpoint_precision = _checkpoint_precision(raw.get("quantization_config"))
        if arch in SUPPORTED_ARCHITECTURES:
            shape = _from_model_config(raw, name, arch)
            if shape is not None:
                return _with(shape, checkpoint_precision=checkpoint_precision)
        return _from_generic(raw, name, arch, checkpoint_precision)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ModelShape:
        """Read ``config.json`` (or a checkpoint folder holding one)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        raw = read_json_object(file, "model config")
        base = os.path.basename(os.path.dirname(os.path.abspath(file))) or "model"
        return cls.from_hf_dict(raw, name=base)


def _with(shape: ModelShape, **changes: Any) -> ModelShape:
    return replace(shape, **changes)


def _checkpoint_precision(qcfg: Any) -> str | None:
    if not isinstance(qcfg, dict):
        return None
    method = str(qcfg.get("quant_method", "")).lower()
    algo = str(qcfg.get("quant_algo", "")).lower()
    if method == "awq":
        return "int4-awq"
    if method == "gptq":
        return "int4-gptq"
    if method in ("fp8", "mxfp4"):
        return method
    if "nvfp4" in (method, algo):
        return "nvfp4"
    if algo == "fp8":
        return "fp8"
    return None


def _from_model_config(raw: dict[str, Any], name: str, arch: str) -> ModelShape | None:
    """Llama-family shapes via the engine's parser; None where it refuses a feature."""
    cleaned = {k: v for k, v in raw.items() if k not in _PLANNER_IRRELEVANT}
    try:
        cfg = ModelConfig.from_dict(cleaned)
    except (ConfigError, KeyError, TypeError, ValueError):
        return None
    return ModelShape(
        name=name,
        architecture=arch,
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        vocab_size=cfg.vocab_size,
        intermediate_size=cfg.intermediate_size,
        qkv_bias=cfg.qkv_bias,
        o_bias=cfg.o_bias,
        mlp_bias=cfg.mlp_bias,
        qk_norm=cfg.qk_norm,
        tie_word_embeddings=cfg.tie_word_embeddings,
        sliding_window=cfg.sliding_window,
        num_sliding_layers=cfg.num_hidden_layers if cfg.sliding_window else 0,
        max_position_embeddings=cfg.max_position_embeddings,
        **_engine_moe_fields(cfg),
    )


def _engine_moe_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The engine's MoEConfig in the planner's terms (Mixtral, Qwen2-MoE, Qwen3-MoE)."""
    moe = cfg.moe
    if moe is None:
        return {}
    return {
        "num_experts": moe.num_experts,
        "num_experts_per_tok": moe.num_experts_per_tok,
        "moe_intermediate_size": moe.moe_intermediate_size,
        "num_moe_layers": len(moe.moe_layers),
        "shared_expert_intermediate_size": moe.shared_expert_intermediate_size,
        "shared_expert_gate": moe.shared_expert_gate,
    }


def _get(raw: dict[str, Any], name: str, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    if default is None:
        raise PlannerError(f"{name}: config.json has none of {', '.join(keys)}")
    return default


def _kv_heads(raw: dict[str, Any], model_type: str, heads: int) -> int:
    if model_type == "falcon":
        if raw.get("new_decoder_architecture") or not raw.get("multi_query", True):
            return int(_get(raw, "falcon", "num_kv_heads", "n_head_kv", default=heads))
        return 1
    if raw.get("multi_query"):
        return 1
    return int(_get(raw, "kv", "num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads))


def _moe_fields(raw: dict[str, Any], num_layers: int) -> dict[str, Any]:
    experts = int(raw.get("num_local_experts") or raw.get("num_experts") or
                  raw.get("n_routed_experts") or 0)  # fmt: skip
    if experts <= 0:
        return {}
    step = int(raw.get("decoder_sparse_step") or 1)
    mlp_only = set(raw.get("mlp_only_layers") or ())
    first_dense = int(raw.get("first_k_dense_replace") or 0)
    moe_layers = sum(
        1 for i in range(num_layers)
        if i not in mlp_only and i >= first_dense and (i + 1) % step == 0
    )  # fmt: skip
    moe_inter = int(raw.get("moe_intermediate_size") or raw.get("intermediate_size") or 0)
    shared = int(raw.get("shared_expert_intermediate_size") or 0)
    if not shared and raw.get("n_shared_experts"):
        shared = int(raw["n_shared_experts"]) * moe_inter
    return {
        "num_experts": experts,
        "num_experts_per_tok": int(_get(raw, "moe", "num_experts_per_tok", "moe_top_k")),
        "moe_intermediate_size": moe_inter,
        "num_moe_layers": moe_layers,
        "shared_expert_intermediate_size": shared,
        "shared_expert_gate": bool(raw.get("shared_expert_intermediate_size")),
    }


def _sliding(raw: dict[str, Any], num_layers: int) -> tuple[int | None, int]:
    window = raw.get("sliding_window")
    if not window or raw.get("use_sliding_window") is False:
        return None, 0
    layer_types = raw.get("layer_types")
    if layer_types:
        return int(window), sum(1 for t in layer_types if t == "sliding_attention")
    if raw.get("use_sliding_window") and raw.get("max_window_layers") is not None:
        return int(window), max(0, num_layers - int(raw["max_window_layers"]))
    return int(window), num_layers


def _norm_layout(raw: dict[str, Any], model_type: str) -> dict[str, Any]:
    if model_type != "falcon":
        return {"parallel_attention": bool(raw.get("parallel_attn", False))}
    new_arch = bool(raw.get("new_decoder_architecture"))
    parallel = new_arch or bool(raw.get("parallel_attn", True))
    if new_arch:
        norms = 1 if raw.get("num_ln_in_parallel_attn") == 1 else 2
    else:
        norms = 1 if parallel else 2
    return {"parallel_attention": parallel, "norms_per_layer": norms, "layernorm_bias": True}


def _from_generic(
    raw: dict[str, Any], name: str, arch: str, checkpoint_precision: str | None
) -> ModelShape:
    model_type = str(raw.get("model_type", "")).lower()
    if model_type in ("refinedweb", "refinedwebmodel", "rw"):
        model_type = "falcon"
    hidden = int(_get(raw, name, "hidden_size", "n_embd", "d_model"))
    layers = int(_get(raw, name, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_get(raw, name, "num_attention_heads", "n_head", "num_heads"))
    head_dim = int(raw.get("head_dim") or hidden // heads)
    window, sliding_layers = _sliding(raw, layers)
    ffn_keys = ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim")
    inter = int(_get(raw, name, *ffn_keys, default=4 * hidden))
    return ModelShape(
        name=name,
        architecture=arch,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=_kv_heads(raw, model_type, heads),
        head_dim=head_dim,
        vocab_size=int(_get(raw, name, "vocab_size")),
        intermediate_size=inter,
        gated_mlp=model_type not in _NON_GATED_TYPES,
        qkv_bias=bool(raw.get("attention_bias", model_type == "qwen2_moe") or raw.get("bias")),
        o_bias=bool(raw.get("bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False) or raw.get("bias")),
        qk_norm=model_type.startswith("qwen3"),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)),
        sliding_window=window,
        num_sliding_layers=sliding_layers,
        max_position_embeddings=int(raw.get("max_position_embeddings") or 2048),
        checkpoint_precision=checkpoint_precision,
        **_moe_fields(raw, layers),
        **_norm_layout(raw, model_type),
    )

"""QuantizationConfig: how the decoder's linear layers are stored, parsed once from a
checkpoint's ``quantization_config`` (fp8, awq, gptq, mxfp4, compressed-tensors, modelopt
layouts) or made for ``quantization=`` on a float checkpoint."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from membound.config.errors import ConfigError

QUANTIZATION_METHODS: tuple[str, ...] = (
    "fp8", "int8", "int4", "awq", "gptq", "mxfp4", "nvfp4", "gguf",
)
# Checkpoint layouts each method loads; "float" means a float checkpoint quantized while loading.
_QUANT_FORMATS: dict[str, tuple[str, ...]] = {
    "fp8": ("float", "fp8", "compressed-tensors", "modelopt"),
    "int8": ("float", "compressed-tensors"),
    "int4": ("float",),
    "awq": ("awq",),
    "gptq": ("gptq", "gptq_v2"),
    "mxfp4": ("float", "mxfp4"),
    "nvfp4": ("float", "modelopt"),
    "gguf": ("gguf",),  # Q4_0/Q4_1/Q4_K blocks of a GGUF file (ModelConfig.from_gguf)
}
_WEIGHT_ONLY = ("int4", "awq", "gptq", "mxfp4", "nvfp4", "gguf")
_DEFAULT_GROUP = {"int4": 128, "awq": 128, "gptq": 128, "mxfp4": 32, "nvfp4": 16, "gguf": 32}


@dataclass(frozen=True)
class QuantizationConfig:
    """How the decoder's linear layers are stored, parsed once from ``quantization_config``
    (or made for ``quantization=`` on a float checkpoint). Embeddings, lm_head, norms and
    biases stay in the model dtype, except a GGUF file's quantized token embedding / output
    table (``int8_modules``). See docs/quantization.md for every layout."""

    method: str  # one of QUANTIZATION_METHODS
    checkpoint_format: str = "float"  # the layout on disk; "float": quantize while loading
    group_size: int | None = None  # input elements per scale; None: one per output channel
    activation_scheme: str = "dynamic"  # "dynamic" per-token | "static" input_scale | "none"
    desc_act: bool = False  # GPTQ act-order: g_idx permutes the input rows
    ignored: tuple[str, ...] = ()  # modules left unquantized (names, globs or "re:" regexes)
    # gguf only: modules held int8 per output row (weight-only), requantized from the file's
    # other block types; may name model.embed_tokens and lm_head (their tables stay int8)
    int8_modules: tuple[str, ...] = ()

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
        if self.int8_modules and self.method != "gguf":
            raise ConfigError(
                f"int8_modules is set by GGUF files only; {self.method} quantizes every "
                "module it does not ignore the same way"
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

    def is_int8(self, module_name: str) -> bool:
        """True if ``module_name`` is held int8 per output row (GGUF's ``int8_modules``)."""
        return module_name in self.int8_modules

    @classmethod
    def for_float_checkpoint(cls, method: str) -> QuantizationConfig:
        """``quantization=method`` on an unquantized checkpoint: quantize while loading."""
        if method in ("awq", "gptq", "gguf"):
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
    strategy = (act or {}).get("strategy")
    expected = "tensor" if scheme == "static" else "token"
    if strategy not in (None, expected):  # the scales the kernels compute, nothing else
        raise ConfigError(
            f"compressed-tensors {scheme} input_activations strategy={strategy!r} is not "
            f"supported; membound computes {scheme} activation scales per {expected} "
            f"(strategy={expected!r})"
        )
    return QuantizationConfig(method, "compressed-tensors", None, scheme,
                              ignored=_names(raw.get("ignore")))

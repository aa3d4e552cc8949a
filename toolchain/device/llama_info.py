import ctypes
import json
import os
from typing import Any, Dict, List

# What the board's llama-cpp-python really loads: llama.cpp's backend registry (each device with
# its backend, type and memory), not only what hardware exists. Python 3.8 (runs on the board).
DEV_TYPES = {0: "cpu", 1: "gpu", 2: "accel", 3: "igpu"}  # enum ggml_backend_dev_type


def registry(llama_cpp: Any) -> List[Dict[str, Any]]:
    lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    names = [n for n in ("libggml.so", "libggml.dylib", "ggml.dll") if os.path.exists(os.path.join(lib_dir, n))]
    lib = ctypes.CDLL(os.path.join(lib_dir, names[0]) if names else "libggml.so")  # already loaded by llama_cpp
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for f in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, f).restype = ctypes.c_char_p
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    out = []
    for i in range(min(64, lib.ggml_backend_dev_count())):
        d = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(d, ctypes.byref(free), ctypes.byref(total))
        out.append({"name": (lib.ggml_backend_dev_name(d) or b"").decode(errors="replace"),
                    "description": (lib.ggml_backend_dev_description(d) or b"").decode(errors="replace"),
                    "backend": (lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(d)) or b"").decode(errors="replace"),
                    "type": DEV_TYPES.get(lib.ggml_backend_dev_type(d), "unknown"),
                    "memory_free_bytes": free.value, "memory_total_bytes": total.value})
    return out


r: Dict[str, Any] = {}
try:
    import llama_cpp
    r["version"] = getattr(llama_cpp, "__version__", None)
    r["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    r["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    try:
        r["devices"] = registry(llama_cpp)
    except Exception as e:  # an older libggml without the registry API: backends from system_info only
        r["devices_error"] = type(e).__name__ + ": " + str(e)[:200]
except Exception as e:
    r["error"] = type(e).__name__ + ": " + str(e)[:300]
print(json.dumps(r))

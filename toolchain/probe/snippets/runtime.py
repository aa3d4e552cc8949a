import importlib.util
import json
import platform
import sys

r = {"python": platform.python_version(), "python_path": sys.executable, "llama_cpp": None, "backends": [], "pip": importlib.util.find_spec("pip") is not None}
try:
    import llama_cpp
    r["llama_cpp"] = llama_cpp.__version__
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    r["system_info"] = info
    r["backends"] = ["gpu-offload"] if llama_cpp.llama_supports_gpu_offload() else ["cpu"]
except Exception as e:
    r["llama_cpp_error"] = type(e).__name__ + ": " + str(e)[:200]
print(json.dumps(r))

import json
import os
import platform
import struct
import sys

# Quick facts only: llama_cpp is found, not imported (importing loads libllama and numpy, seconds
# on a small board); stage 2's llama.py imports it.
r = {"python": platform.python_version(), "python_path": sys.executable, "bits": struct.calcsize("P") * 8,
     "pip": False, "llama_cpp": None, "llama_cpp_libs": []}
try:
    import importlib.util
    r["pip"] = importlib.util.find_spec("pip") is not None
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        path = os.path.dirname(spec.origin)
        r["llama_cpp_path"] = path
        try:
            from importlib import metadata
            r["llama_cpp"] = metadata.version("llama_cpp_python")
        except Exception:
            r["llama_cpp"] = "unknown version"
        lib = os.path.join(path, "lib")
        r["llama_cpp_libs"] = sorted(n for n in os.listdir(lib) if n.startswith(("libggml", "ggml", "libllama"))) if os.path.isdir(lib) else []
except Exception as e:
    r["error"] = type(e).__name__ + ": " + str(e)[:200]
print(json.dumps(r))

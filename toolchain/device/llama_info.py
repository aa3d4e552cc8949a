import json

r = {}
try:
    import llama_cpp
    r["version"] = getattr(llama_cpp, "__version__", None)
    r["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    r["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
except Exception as e:
    r["error"] = type(e).__name__ + ": " + str(e)[:300]
print(json.dumps(r))

"""LLM files: the catalog (profiles/models), where GGUFs come from, reading their headers, requantizing, synthetic GGUFs."""

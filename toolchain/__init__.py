"""edgedeploy: probe, plan, package, ship, run and validate LLMs on edge devices."""

__version__ = "0.1.0"

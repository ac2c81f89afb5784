"""appliance: a single-node LLM inference appliance over llama.cpp."""

__version__ = "0.1.0"

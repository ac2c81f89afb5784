"""`appliance bench`: end-to-end load generation over HTTP and side-by-side runs with peers.

load      — closed-loop streaming clients against OpenAI-compatible URLs, per-level figures
servers   — start the appliance and its peers (llama-server, llama-cpp-python's server) pinned
            to the same settings, wait until they serve, stop them
scenarios — the figures beyond plain levels: a json_schema stream among plain ones, hot swap,
            overload against a bounded queue
bareload  — llama.cpp's own load time for a model (the hot-swap reference), in a child process
ceiling   — llama-bench's single-stream decode (the engine's ceiling)
pergpu    — `--gpus per-model`: the model once per GPU, both driven at once, vs one alone
report    — the readable table; plot — the PNG; markdown — a JSON result as the docs' table
"""

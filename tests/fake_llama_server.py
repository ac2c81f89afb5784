"""A stand-in for llama-server in the two-GPU bench test (no llama-server binary on a CPU test
machine): it appends its argv as one JSON line to $FAKE_LLAMA_SERVER_LOG, then serves the `-m`
model under the `-a` alias on `--port` with llama-cpp-python's server (context `-c` / `-np`),
plus llama-server's /health. Device flags are recorded, not applied."""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> None:
    with open(os.environ["FAKE_LLAMA_SERVER_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    from appliance.engine.cpufeatures import match_in_llama_cpp_python

    match_in_llama_cpp_python()
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    port = int(flag("--port"))
    app = create_app(
        server_settings=ServerSettings(host="127.0.0.1", port=port, interrupt_requests=False),
        model_settings=[ModelSettings(model=flag("-m"), model_alias=flag("-a"), verbose=False,
                                      n_ctx=int(flag("-c")) // int(flag("-np")), n_threads=int(flag("-t")))],
    )
    app.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])

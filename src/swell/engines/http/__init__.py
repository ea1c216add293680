"""The `http` engine: a worker that fronts a server a team already runs (an AUTOMATIC1111/Forge web UI
started with `--api`, or an OpenAI-compatible server such as vLLM), optionally starting it itself."""

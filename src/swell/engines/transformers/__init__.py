"""The `transformers` engine: causal LMs, several jobs per `generate`, each sequence streamed.

`spec` describes it without importing torch (what swell.yaml checks and the gateway use); `engine`
runs it in a worker, with `streaming` (per-sequence incremental decoding and stop strings),
`sampling` (each sequence's own temperature, top-k, top-p and seed inside one batched call) and
`stopping` (the per-step hook that streams, stops and cancels each sequence on its own).
"""

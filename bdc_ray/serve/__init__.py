"""The OpenAI-compatible serving app of the customised solver (FastAPI + Ray Serve).

`protocol` (request/response bodies), `engine` (batched, streamed generation on the gated
mixture) import without Ray Serve; `app` holds the deployment."""

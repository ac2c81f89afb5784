"""The HTTP layer: an aiohttp app serving the OpenAI-compatible API."""

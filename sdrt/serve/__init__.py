"""`sdrt serve`: an HTTP image service (OpenAI Images API, AUTOMATIC1111 API, health, metrics)."""

"""The OpenAI-compatible HTTP server (``membound serve``); needs ``membound[server]``.

Import ``membound.entrypoints.openai.api_server.build_app`` for the app itself; this package
imports nothing at import time so that the CLI can load ``openai.cli`` without the extras.
"""

"""The read-only web inspector served at ``/`` beside ``/mcp`` (docs/web.md)."""

from .app import build_web_app

__all__ = ["build_web_app"]

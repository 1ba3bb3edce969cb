"""The web console: chat playground, live memory dashboard and the planner, served at ``/``.

Static HTML/CSS/JS under ``static/`` (no build step, no CDN) and the JSON routes the pages
use; see docs/console.md.
"""

from membound.entrypoints.openai.console.app import mount_console

__all__ = ["mount_console"]

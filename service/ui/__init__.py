"""The operator console (`/ui/`) and the API reference page (`/docs`): server-rendered, no CDN, no JS build."""

from service.ui.console import Console, console_routes

__all__ = ["Console", "console_routes"]

"""Adding threadloom to MCP clients' configurations (`threadloom install` / `uninstall`)."""

from .clients import CLIENTS, Client, get_client
from .launch import Launcher, default_root, find_launcher
from .plan import FileChange, Plan, client_status, plan_install, plan_uninstall, read_entry

__all__ = [
    "CLIENTS",
    "Client",
    "FileChange",
    "Launcher",
    "Plan",
    "client_status",
    "default_root",
    "find_launcher",
    "get_client",
    "plan_install",
    "plan_uninstall",
    "read_entry",
]

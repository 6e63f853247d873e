"""The dashboard's screens."""

from tui.screens.help import HelpScreen
from tui.screens.main import MainScreen
from tui.screens.target import SetTargetDialog

__all__ = ["HelpScreen", "MainScreen", "SetTargetDialog"]

"""The dashboard's screens: main (feed, queue, status), part detail, note and help dialogs."""

from .box_editor import BoxEditor
from .detail import DetailScreen
from .dialogs import HelpScreen, NoteScreen
from .main import MainScreen

__all__ = ["BoxEditor", "DetailScreen", "HelpScreen", "MainScreen", "NoteScreen"]

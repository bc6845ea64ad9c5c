"""The dashboard's screens: main (feed, queue, status), part detail, note and help dialogs."""

from adfm.appliance.review.screens.detail import DetailScreen
from adfm.appliance.review.screens.dialogs import HelpScreen, NoteScreen
from adfm.appliance.review.screens.main import MainScreen

__all__ = ["DetailScreen", "HelpScreen", "MainScreen", "NoteScreen"]

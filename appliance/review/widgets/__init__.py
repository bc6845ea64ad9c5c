"""The dashboard's widgets: bars, the parts table, the part image, the part text, the status view."""

from .bars import Banner, FilterBar, MessageLine, TopBar
from .part_image import PartImage
from .part_text import part_details
from .parts_table import PartsTable
from .status_view import StatusView

__all__ = ["Banner", "FilterBar", "MessageLine", "PartImage", "PartsTable", "StatusView", "TopBar", "part_details"]

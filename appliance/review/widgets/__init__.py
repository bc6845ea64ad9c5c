"""The dashboard's widgets: bars, the parts table, the part image, the part text, the status view."""

from adfm.appliance.review.widgets.bars import Banner, FilterBar, MessageLine, TopBar
from adfm.appliance.review.widgets.part_image import PartImage
from adfm.appliance.review.widgets.part_text import part_details
from adfm.appliance.review.widgets.parts_table import PartsTable
from adfm.appliance.review.widgets.status_view import StatusView

__all__ = ["Banner", "FilterBar", "MessageLine", "PartImage", "PartsTable", "StatusView", "TopBar", "part_details"]

"""Widgets render what they are given and post messages; they do no I/O."""

from tui.widgets.detail import DetailPane
from tui.widgets.event_log import EventLog
from tui.widgets.fleet_table import FleetTable
from tui.widgets.header import FleetHeader
from tui.widgets.memory_bar import MemoryBar
from tui.widgets.sparkline import FixedSparkline

__all__ = ["DetailPane", "EventLog", "FixedSparkline", "FleetHeader", "FleetTable", "MemoryBar"]

"""The fleet table: one keyed row per VM, updated cell by cell so the cursor and scroll stay put."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.cache import LRUCache
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from balloonctl.model import VmStatus
from balloonctl.units import format_duration, format_size_aligned
from tui.fleetview import VmRow, hint_text, state_text
from tui.widgets.memory_bar import memory_bar

__all__ = ["COLUMNS", "HOST_COLUMN", "STATE_WIDTHS", "Column", "FleetTable", "row_cells"]

Cell = str | Text

_STATUS_STYLE = {
    VmStatus.OK: "green",
    VmStatus.CONVERGING: "cyan",
    VmStatus.PRESSURE: "bold magenta",
    VmStatus.STALE: "yellow",
    VmStatus.NO_DRIVER: "yellow",
    VmStatus.NO_DEVICE: "yellow",
    VmStatus.BUSY: "bold red",
    VmStatus.UNREACHABLE: "bold red",
    VmStatus.ERROR: "bold red",
}


def _state(row: VmRow) -> Text:
    status = row.state.status
    words = state_text(row)
    text = Text(status.value, style=_STATUS_STYLE[status])
    rest = words[len(status.value):]
    if rest:
        text.append(rest, style="red" if status in (VmStatus.UNREACHABLE, VmStatus.BUSY,
                                                    VmStatus.ERROR) else "dim")
    return text


def _number(value: str, style: str = "") -> Text:
    """A numeric cell: right-aligned, so a column of sizes lines up on its unit."""
    return Text(value, style=style, justify="right")


def _size(value: int | None) -> Text:
    return _number(format_size_aligned(value))


def _outdated(cell: Callable[[VmRow], Text]) -> Callable[[VmRow], Text]:
    """Dim the guest's numbers when its last report predates the balloon's size."""

    def dimmed(row: VmRow) -> Text:
        value = cell(row)
        if row.stats_outdated:
            value.style = Style.combine([Style.parse(str(value.style or "")), Style(dim=True)])
        return value

    return dimmed


def _stat_size(field: str) -> Callable[[VmRow], Text]:
    @_outdated
    def cell(row: VmRow) -> Text:
        stats = row.state.stats
        return _size(None if stats is None else getattr(stats, field))

    return cell


def _swap(row: VmRow) -> Text:
    if row.swap_in_rate is None and row.swap_out_rate is None:
        return _number("-")
    rate_in, rate_out = round(row.swap_in_rate or 0.0), round(row.swap_out_rate or 0.0)
    text = f"{format_size_aligned(rate_in)}/{format_size_aligned(rate_out)}"  # bytes per s
    return _number(text, "bold yellow" if rate_in + rate_out > 0 else "")


def _hint(row: VmRow) -> Text:
    hint = row.state.hint
    words = hint_text(row.state)
    if hint.mode.value in ("unknown", "unsupported") or not hint.enabled:
        return Text(words, style="dim")  # off must not read as active
    return Text(words, style="green")


_ARROWS = {"shrink": "↓", "grow": "↑"}


def _plan(row: VmRow) -> Text:
    """Auto's decision: ``↓1.75G`` / ``↑2.00G`` (the planned target), ``hold``, ``leave``;
    ``foreign`` for a VM another writer moved; bold when auto applies it."""
    if row.state.owner is not None and row.state.owner.value == "foreign":
        return Text("foreign", style="yellow")
    d = row.plan
    if d is None:
        return Text("-")
    if d.target is None:
        text = d.action.value
    else:
        text = f"{_ARROWS.get(d.action.value, '')}{format_size_aligned(d.target).strip()}"
    if d.action.value == "leave":
        return Text(text, style="dim")
    return Text(text, style="bold" if row.auto else "")


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    label: str
    width: int
    cell: Callable[[VmRow], Cell]
    numeric: bool = False


# The guest's numbers (actual, free, cached) come first so that they fit an 80-column
# terminal; the state column gives up width first (see ``FleetTable.fit``).
COLUMNS: tuple[Column, ...] = (
    Column("name", "VM", 10, lambda row: row.vm_name),
    Column("state", "state", 28, _state),
    Column("actual", "actual", 6, lambda row: _size(row.state.actual), numeric=True),
    Column("free", "free", 6, _stat_size("free_memory"), numeric=True),
    Column("cached", "cached", 6, _stat_size("disk_caches"), numeric=True),
    Column("avail", "avail", 6, _stat_size("available_memory"), numeric=True),
    Column("target", "target", 6, lambda row: _size(row.state.target), numeric=True),
    Column("ram", "RAM", 6, lambda row: _size(row.state.guest_ram), numeric=True),
    Column("plan", "plan", 7, _plan),  # after the columns fit() keeps on screen
    Column("swap", "swap/s", 11, _swap, numeric=True),  # "1023K/1023K"
    Column("hint", "hint", 11, _hint),  # "off (device)"
    Column("age", "age", 5, _outdated(lambda row: _number(format_duration(row.state.stats_age))),
           numeric=True),
    Column("bar", "free/cached/used/balloon", 24, lambda row: memory_bar(row.state, 24)),
)
STATE_WIDTHS = (14, 28)  # the state column's narrowest and widest
# First with several hosts (``HOST/VM`` rows); its width is the longest host label's.
HOST_COLUMN = Column("host", "host", 4, lambda row: row.host or "")
HOST_WIDTHS = (4, 16)


def row_cells(row: VmRow, selected: bool,
              columns: Sequence[Column] = COLUMNS) -> tuple[Cell, ...]:
    mark: Cell = Text("●", style="bold magenta") if selected else " "
    return (mark, *(column.cell(row) for column in columns))


class FleetTable(DataTable[Cell]):
    """Keyed rows (the VM name is the key); ``show`` changes only the cells that changed.

    ``hosts``: the labels of the hosts shown, when there are several: the host column
    comes first, as wide as the longest label (within ``HOST_WIDTHS``)."""

    def __init__(self, *, hosts: Sequence[str] = (), id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.columns_shown: tuple[Column, ...] = COLUMNS
        if len(hosts) > 1:
            low, high = HOST_WIDTHS
            width = max(low, min(high, max(len(h) for h in hosts)))
            self.columns_shown = (
                Column(HOST_COLUMN.key, HOST_COLUMN.label, width, HOST_COLUMN.cell), *COLUMNS)
        self._cells: dict[str, tuple[Cell, ...]] = {}
        # The row and selection each VM's cells were made from: an unchanged row (the same
        # frozen VmRow) is not rendered into cells again.
        self._shown: dict[str, tuple[VmRow, bool]] = {}
        self._labels: dict[str, str] = {}
        self._sorted_by: tuple[str, bool] | None = None
        # Cell renders keyed on each cell's own version (see _render_cell).
        self._versions: dict[tuple[str, str], int] = {}
        self._cell_lines: LRUCache[tuple[object, ...], list[list[Segment]]] = LRUCache(2048)
        # DataTable's own caches are keyed on its table-wide update counter, so after a
        # poll their old entries are dead weight: keep them to about a screenful, so memory
        # levels off after a few polls instead of after a thousand cached lines.
        self._cell_render_cache = LRUCache(256)
        self._row_render_cache = LRUCache(256)
        self._row_renderable_cache = LRUCache(256)
        self._line_cache = LRUCache(256)
        self.fixed_columns = 1 + self.columns_shown.index(COLUMNS[0]) + 1  # mark, host, VM
        self.add_column(" ", key="sel", width=1)
        for column in self.columns_shown:
            self.add_column(self._label(column, None), key=column.key, width=column.width)
            self._labels[column.key] = column.label
        self._numeric = {c.key for c in self.columns_shown if c.numeric}

    @property
    def cursor_vm(self) -> str | None:
        """The VM under the cursor."""
        if not self.row_count:
            return None
        key = self.ordered_rows[min(self.cursor_row, self.row_count - 1)].key
        return key.value

    def show(self, rows: Sequence[VmRow], selected: set[str]) -> None:
        """Make the table show ``rows`` in this order, keeping the cursor on its VM."""
        wanted = [row.name for row in rows]
        wanted_set = set(wanted)
        cursor_vm, cursor_row = self.cursor_vm, self.cursor_row
        for name in [n for n in self._cells if n not in wanted_set]:
            self.remove_row(name)
            del self._cells[name]
            self._shown.pop(name, None)
        column_keys = ("sel", *(column.key for column in self.columns_shown))
        for row in rows:
            source = (row, row.name in selected)
            shown = self._shown.get(row.name)
            if shown is not None and shown[0] is row and shown[1] == source[1]:
                continue
            self._shown[row.name] = source
            cells = row_cells(row, source[1], self.columns_shown)
            old = self._cells.get(row.name)
            if old is None:
                # A row shown again (after a filter) must not hit renders of its old values.
                for column in column_keys:
                    self._bump(row.name, column)
                self.add_row(*cells, key=row.name)
            else:
                for column, new, prev in zip(column_keys, cells, old, strict=True):
                    if new != prev:
                        self._bump(row.name, column)
                        self.update_cell(row.name, column, new, update_width=False)
            self._cells[row.name] = cells
        position = {name: i for i, name in enumerate(wanted)}
        if [r.key.value for r in self.ordered_rows] != wanted:
            # what DataTable.sort does, by row key: the name cell holds only the VM's own
            # name, which several hosts may share
            self._row_locations = TwoWayDict({RowKey(n): i for i, n in enumerate(wanted)})
            self._update_count += 1
            self.refresh()
        # Removing or adding rows keeps the cursor's row index, not its VM: put it back on
        # its VM when that is still shown, else near where it was.
        if cursor_vm is not None and cursor_vm in position:
            new_row = position[cursor_vm]
        else:
            new_row = min(cursor_row, max(0, len(wanted) - 1))
        if new_row != self.cursor_row:
            self.move_cursor(row=new_row, scroll=False)

    def _bump(self, name: str, column: str) -> None:
        cell_id = (name, column)
        self._versions[cell_id] = self._versions.get(cell_id, 0) + 1

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> list[list[Segment]]:
        # DataTable keys its cell cache on one table-wide update counter, so a single
        # changed cell makes it re-render every visible cell (most of the dashboard's CPU
        # with hundreds of VMs). Key on the cell's own version instead.
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width, cursor,
                                        hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or column_key is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor,
                                        hover)
        key = (
            row_key, column_key, row_index,
            self._versions.get((str(row_key.value), str(column_key.value)), 0),
            base_style, width, cursor, hover, self._show_hover_cursor,
            self._pseudo_class_state,
        )
        lines = self._cell_lines.get(key)
        if lines is None:
            lines = super()._render_cell(row_index, column_index, base_style, width, cursor,
                                         hover)
            self._cell_lines[key] = lines
        return lines

    @staticmethod
    def _label(column: Column, arrow: str | None) -> Text:
        text = Text(column.label, justify="right" if column.numeric else "left")
        if arrow:
            text.append(arrow, style="bold")
        return text

    def mark_sort(self, key: str, reverse: bool) -> None:
        """Show the sort column and direction in the column labels."""
        if self._sorted_by == (key, reverse):
            return
        self._sorted_by = (key, reverse)
        for column in self.columns_shown:
            arrow = (" ▼" if reverse else " ▲") if column.key == key else None
            self.columns[column.key].label = self._label(column, arrow)  # type: ignore[index]
        self.refresh()

    def fit(self, width: int) -> None:
        """Share ``width`` terminal columns: the state column narrows (to
        ``STATE_WIDTHS[0]``) before the guest's numbers leave the screen."""
        kept = self.columns_shown[:len(self.columns_shown) - len(COLUMNS) + 8]
        fixed = sum(c.width + 2 * self.cell_padding for c in kept if c.key != "state")
        fixed += 1 + 2 * self.cell_padding  # the selection mark
        narrow, wide = STATE_WIDTHS
        state_width = max(narrow, min(wide, width - fixed - 2 * self.cell_padding - 1))
        column = self.columns[ColumnKey("state")]
        if column.width != state_width:
            column.width = state_width
            self._require_update_dimensions = True
            self._cell_lines.clear()
            self.refresh()

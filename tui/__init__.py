"""The Textual dashboard for balloonctl.

``run_dashboard(source, ...)`` runs it on any ``balloonctl.fleet.DataSource``;
``DashboardApp`` is the App itself, for tests and embedding.
"""

from tui.app import DashboardApp, run_dashboard

__all__ = ["DashboardApp", "run_dashboard"]

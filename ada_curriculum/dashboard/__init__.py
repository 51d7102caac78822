"""The live dashboard: a stdlib HTTP server over a run's metrics store and a hand-written page.

`serve(run_dir, host, port)` starts it in a background thread; `ada-curriculum dashboard RUN_DIR`
runs it in the foreground.
"""

from ada_curriculum.dashboard.server import DashboardConfig, DashboardServer, make_server, serve

__all__ = ["DashboardConfig", "DashboardServer", "make_server", "serve"]

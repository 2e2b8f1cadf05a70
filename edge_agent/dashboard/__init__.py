"""The web dashboard of a fleet, served from the operator's process: ``edge-agent dashboard``.

:mod:`.snapshot` turns the fleet client's view into the page's data (pure, unit-tested), :mod:`.history`
keeps the chart series, :mod:`.server` serves the page, live updates (server-sent events) and ``/metrics``.
"""

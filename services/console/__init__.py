"""The console: a read-only web dashboard over the bus (port 8100) and the alerts (apprise), as one process.

See ``service.py`` for how it runs, ``view.py`` for what it reads, ``chart.py`` for the charts' series and
``notify.py`` for the alerts; the page itself is ``static/`` (lightweight-charts vendored under
``static/vendor/``, served by the console: the page loads nothing from anywhere else).
"""

import sys

from services.console.service import Console
from shared.service import run_service

console = Console()
# events=False: the console holds no publish right (it is read-only on the bus), so it publishes no events.
sys.exit(run_service("console", console.run, routes=console.routes, events=False))

import sys

from services.signal.service import run
from shared.service import run_service

sys.exit(run_service("signal", run))

import sys

from services.risk.service import run
from shared.service import run_service

sys.exit(run_service("risk", run))

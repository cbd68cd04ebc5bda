import sys

from services.optimizer.service import run
from shared.service import run_service

sys.exit(run_service("optimizer", run))

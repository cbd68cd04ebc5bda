import sys

from services.executor.service import run
from shared.service import run_service

sys.exit(run_service("executor", run))

import sys

from services.ingest.service import run
from shared.service import run_service

sys.exit(run_service("ingest", run))

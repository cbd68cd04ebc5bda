import sys

from aura.exchange_sim.cli import main

sys.exit(main())

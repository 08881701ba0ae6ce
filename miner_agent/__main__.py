import sys

from miner_agent.commands.main import main

sys.exit(main())

"""``python -m jobmon_airflow.worker_node ...``: how every job is started (see the package docstring)."""

import sys

from jobmon_airflow.worker_node.cli import main

sys.exit(main())

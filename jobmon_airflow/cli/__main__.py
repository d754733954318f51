import sys

from jobmon_airflow.cli import main

sys.exit(main())

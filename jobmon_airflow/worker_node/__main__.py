"""The worker node's entry point (see the package docstring), run either way:

* ``python -S <package dir>/worker_node/__main__.py ...``: how jobs start it (``execution.jobs.worker_argv``).
  ``-S`` skips ``site``; this file then puts the directory holding the package first on ``sys.path``, in place of
  its own directory (which Python put there and which must not shadow anything);
* ``python -m jobmon_airflow.worker_node ...``: with the package importable as usual.
"""

import sys

if not __package__:  # run as a file
    from os.path import abspath, dirname

    _here = dirname(abspath(__file__))
    sys.path[:] = [dirname(dirname(_here)), *(p for p in sys.path if p and abspath(p) != _here)]

from jobmon_airflow.worker_node.cli import main

sys.exit(main())

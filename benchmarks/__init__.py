"""Benchmarks of jobmon-airflow on the real Grid Engine cluster and MariaDB (``python -m benchmarks.run``).

Not part of the test suite: nothing here is named ``test_*``.
"""

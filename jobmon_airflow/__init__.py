"""Jobmon, IHME's HPC workflow tracker, as an Apache Airflow 3 provider and plugin for Grid Engine."""

__version__ = "0.1.0"

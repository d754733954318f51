from jobmon_airflow.operators.array import JobmonArrayOperator
from jobmon_airflow.operators.task import JobmonTaskOperator

__all__ = ["JobmonArrayOperator", "JobmonTaskOperator"]

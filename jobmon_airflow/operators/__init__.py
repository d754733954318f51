from jobmon_airflow.operators.task import JobmonTaskOperator

__all__ = ["JobmonTaskOperator"]

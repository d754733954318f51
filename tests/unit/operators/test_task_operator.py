"""JobmonTaskOperator's arguments: Airflow retries from max_attempts, for plain and mapped tasks alike."""

from __future__ import annotations

from datetime import datetime

import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from jobmon_airflow.clusters.base import ClusterUnavailable, SubmissionError, UnknownQueue
from jobmon_airflow.operators import JobmonTaskOperator
from jobmon_airflow.resources import ResourceError


def test_mapped_tasks_get_their_retries_from_max_attempts() -> None:
    """partial().expand() does not run __init__ for the scheduler: retries must come from partial's arguments,
    or every mapped task gets max_tries 0 and never retries an exit-code or resource-kill failure."""
    with DAG("retries", schedule=None, start_date=datetime(2026, 1, 1)):
        plain = JobmonTaskOperator(task_id="plain", command="true", max_attempts=5)
        mapped = JobmonTaskOperator.partial(task_id="mapped", max_attempts=5).expand(command=["a", "b"])
        default = JobmonTaskOperator.partial(task_id="default").expand(command=["a"])
        explicit = JobmonTaskOperator.partial(task_id="explicit", max_attempts=5, retries=1).expand(command=["a"])
    assert (plain.retries, mapped.retries, default.retries, explicit.retries) == (4, 4, 2, 1)
    assert mapped.retry_delay.total_seconds() == 5


def test_mapped_retries_survive_serialisation_to_the_scheduler() -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("retries_serialised", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        JobmonTaskOperator.partial(task_id="mapped", max_attempts=4).expand(command=["a", "b"])
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert restored.get_task("mapped").retries == 3


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (ClusterUnavailable("unable to contact qmaster"), AirflowException),
        (SubmissionError("job rejected: no suitable queues"), AirflowFailException),
        (UnknownQueue("compute_resources.queue: no queue 'x.q'"), AirflowFailException),
        (ResourceError("compute_resources.memory: bad"), AirflowFailException),
    ],
)
def test_a_cluster_that_cannot_be_reached_fails_the_try_only(error: Exception, raised: type[Exception]) -> None:
    """A qmaster outage is transient (Airflow retries the try); refusals and configuration errors are not."""
    with DAG("errors", schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonTaskOperator(task_id="t", command="true", cluster="local")
    with pytest.raises(raised) as caught, op.run_errors():
        raise error
    assert type(caught.value) is raised


def test_a_name_longer_than_jobmon_keeps_fails_at_parse_naming_the_field() -> None:
    with (
        DAG("names", schedule=None, start_date=datetime(2026, 1, 1)),
        pytest.raises(ValueError, match=r"^name: at most 255"),
    ):
        JobmonTaskOperator(task_id="t", command="true", name="n" * 256)


def test_the_array_operator_is_retryable_and_knows_a_retry_from_a_new_pass() -> None:
    from types import SimpleNamespace

    from jobmon_airflow.operators import JobmonArrayOperator
    from jobmon_airflow.templates import TaskTemplate

    template = TaskTemplate(name="m", command_template="run {loc}", node_args=["loc"])
    with DAG("array_retries", schedule=None, start_date=datetime(2026, 1, 1)):
        op = JobmonArrayOperator(task_id="a", task_template=template, node_args={"loc": [1, 2]}, cluster="local")
    assert op.retries == 2

    def identity(try_number: int, max_tries: int) -> bool:
        ti = SimpleNamespace(try_number=try_number, max_tries=max_tries)
        return op.workflow({"ti": ti, "run_id": "r"}).new_pass  # type: ignore[arg-type]

    assert identity(1, 2) is True  # the first run
    assert identity(2, 2) is False and identity(3, 2) is False  # Airflow's retries
    assert identity(4, 5) is True  # cleared after try 3: max_tries = 3 + retries

"""Sensors: the workflow reaper's (:mod:`.reaper`) and :class:`~.workflow.JobmonWorkflowSensor` for DAG authors."""

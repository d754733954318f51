"""The bridge between Jobmon's pages / query API and Airflow's UI: who the Airflow user is and which DAGs they may
read (:mod:`.auth`)."""

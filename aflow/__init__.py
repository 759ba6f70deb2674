"""aflow: an async-native workflow orchestrator with Airflow's vocabulary."""

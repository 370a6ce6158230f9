"""Top floor: `lmpipe`'s command line (`cli`, `generate_command`, `quiet_logs`), the
scheduled run of every stage (`scheduled_run`, `run_lock`), its schedules (`schedule`:
cron, systemd) and the Airflow DAG (`airflow_dag`). Nothing in lmpipe imports this folder."""

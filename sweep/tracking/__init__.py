"""The MLflow side: a study's parent run, one child run per trial, replay of what was missed."""

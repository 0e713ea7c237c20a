"""Running trials: a study's set-up and optimize loop, the objective, worker processes."""

"""The MLOps layer: MLflow tracking and the model registry, DVC experiments. The only layer that
imports mlflow; only flows and the CLI use it."""

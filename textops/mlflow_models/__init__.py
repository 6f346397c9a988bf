"""Models-from-code entries: MLflow runs one of these files to build a registered version's pyfunc, instead of
unpickling an object saved with it. Not imported by textops itself (each calls mlflow.models.set_model)."""

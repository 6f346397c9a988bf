"""The sentiment pyfunc as code (MLflow models-from-code): `mlflow.pyfunc.load_model` runs this file."""

from mlflow.models import set_model

from textops.pyfunc import ClassifierModel

set_model(ClassifierModel())

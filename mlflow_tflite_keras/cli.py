"""Command line: ``mlflow-tflite-keras``."""

import click


@click.group()
@click.version_option(package_name="mlflow-tflite-keras")
def cli():
    """TensorFlow Lite models in MLflow: inspect, log, convert to Keras, verify."""

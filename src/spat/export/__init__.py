"""Exports of a trained run: RobustBench's ``model_info`` JSON and spat's portable model file
(safetensors with the metadata :func:`spat.load_model` needs to rebuild the model without the
run directory). See README "Exporting to RobustBench and portable models"."""

from spat.export.robustbench import (
    ExportResult,
    export_run,
    format_eps,
    robustbench_architecture,
    robustbench_model_info,
)

__all__ = [
    "ExportResult",
    "export_run",
    "format_eps",
    "robustbench_architecture",
    "robustbench_model_info",
]

"""Run the podstream worker: a RunPod async-generator handler that streams every generated file."""

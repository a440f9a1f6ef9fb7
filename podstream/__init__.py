"""podstream: stream large GPU outputs from RunPod serverless workers to their users.

`import podstream` is light: it never imports torch (the worker extra is only needed by `worker`).
"""

__version__ = "0.1.0"

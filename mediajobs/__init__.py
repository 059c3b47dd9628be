"""mediajobs: a gRPC control plane for media processing jobs.

`mediajobs.v1` holds the code generated from protos/ (never edit it),
`mediajobs.server` the server, `mediajobs.client` the Python client and CLI.
"""

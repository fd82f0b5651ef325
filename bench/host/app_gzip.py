"""The gzip row's "app gzip": the deployed app (BENCH_APP) wrapped in Starlette's GZipMiddleware
at the deployed nginx's gzip level and threshold: what an app compressing its own responses does."""

import os
from importlib import import_module

from starlette.middleware.gzip import GZipMiddleware

module, _, attribute = os.environ["BENCH_APP"].partition(":")
app = GZipMiddleware(getattr(import_module(module), attribute),
                     minimum_size=int(os.environ["BENCH_GZIP_MIN_LENGTH"]),
                     compresslevel=int(os.environ["BENCH_GZIP_LEVEL"]))

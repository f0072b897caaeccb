"""The helper threads that split one picture's work (colour conversion, JPEG halves, tone mapping)
across the cores a grab may use. numpy, libjpeg-turbo and swscale let go of the GIL, so the parts
really run side by side."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor


@functools.cache
def helper_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=3, thread_name_prefix="stillframe-band")

"""ByteOr benchmarks: ``python -m benchmarks [--quick]`` prints a markdown table and writes JSON.

Every figure is measured next to a baseline taken in the same run (the app's own ``/healthz``,
bare Python importing the same libraries, a minimal ASGI sink), and reported as a ratio.
Load is bounded in count and time and goes to 127.0.0.1 only.
"""

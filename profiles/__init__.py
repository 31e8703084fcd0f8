"""Profiles: what every descendant of a ``.nest`` file costs and scores on this device.

``nestdnn profile MODEL.nest`` measures, per descendant, the test accuracy (``accuracy``),
the peak RSS of loading and running it in a fresh process (``memory``), and the batch-1
latency on torch eager and on the TFLite runtime (``latency``, ``torch_backend``,
``tflite``), and writes a JSON profile (``schema``: ``load_profile`` / ``save_profile``),
optionally with a plot (``plot``). ``profiler.profile_nest`` does the work; ``cli`` is the
command. The scheduler reads profiles through ``schema.descendant_table``.
"""

"""The execution layer: where agent code and models run, and how they talk.

- :mod:`~maia_core.execution.codec` and :mod:`~maia_core.execution.channel`: the data-only
  wire format (msgpack; images and arrays as bytes) and framed sockets. Nothing that crosses
  from a process agent code can reach is ever unpickled.
"""

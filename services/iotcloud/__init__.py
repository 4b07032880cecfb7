"""The ``iotcloud`` command: set-up, embedded parts, supervision, administration."""

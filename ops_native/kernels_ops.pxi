# bindings: see _core.pyx

"""ops_native: the native kernel core (C + SIMD, Cython-wrapped) of edge-agent."""

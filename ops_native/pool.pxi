# The executor's buffer pool (its memory plan at run time). Included into ops_native/_core.pyx.
#
# In Cython so that the native steps (ConvStep, DenseStep) and the run loop take and return buffers with
# C calls: as a Python class, empty() + give() cost ~1.1 us a step, most of the per-node overhead of a
# model of small layers.

from cpython.ref cimport Py_REFCNT

cdef cnp.dtype _POOL_F32 = _on_np.dtype(_on_np.float32)


class _PoolBuffer(_on_np.ndarray):
    """Raw byte buffer owned by a BufferPool (its type marks arrays the pool may recycle)."""


cdef class BufferPool:
    """Recycles large intermediate buffers between nodes and runs.

    empty() hands out plain ndarrays backed by a pooled raw buffer; the run loop hands an array back
    when the executor clears its slot (give() from Python: ops_native.ops.BufferPool). A buffer is only reused when nothing else refers to it (no view, no other
    slot, not returned to the caller): checked with reference counts, so aliasing ops (Reshape, Identity,
    Squeeze, a Transpose view...) are safe without bookkeeping.

    Reuse is most-recently-freed first, among buffers of the requested size up to twice it: the buffer a
    node gets is usually the one its producer's input just released, still in L2/L3. Matching sizes
    exactly kept one buffer per distinct size alive, a working set that spilled the caches on
    MobileNetV2 (its convolutions ran ~1.5x slower in the graph than alone). Buffers start 64-byte
    aligned (whole cache lines for the SIMD stores). Fresh large allocations would also cost page faults
    on every run.

    max_bytes / check: a request over max_bytes calls check(shape, dtype, "output"), which should raise
    (the executor's per-tensor limit); without one it raises MemoryError.
    """

    MIN_BYTES = 1 << 16  # small arrays come from numpy's own cache
    MAX_FREE = 64        # free buffers kept (oldest dropped first)
    ALIGN = 64

    cdef public list _free     # aligned _PoolBuffer views, most recently freed last
    cdef Py_ssize_t min_bytes, max_free
    cdef object max_bytes
    cdef object check

    def __init__(self, max_bytes=4 << 30, check=None):
        self._free = []
        self.min_bytes = self.MIN_BYTES
        self.max_free = self.MAX_FREE
        self.max_bytes = max_bytes
        self.check = check

    cdef cnp.ndarray _take(self, tuple shape, cnp.dtype dt):
        cdef Py_ssize_t nd = len(shape), i
        cdef cnp.npy_intp dims[32]
        if nd > 32:
            return _on_np.empty(shape, dt)
        nbytes = dt.itemsize
        for i in range(nd):
            dims[i] = shape[i]
            if dims[i] < 0:
                raise ValueError(f"negative dimensions are not allowed: {list(shape)}")
            nbytes *= dims[i]
        if nbytes > self.max_bytes:
            if self.check is not None:
                self.check(shape, dt, "output")
            raise MemoryError(f"output of shape {list(shape)} needs {nbytes} bytes, over {self.max_bytes}")
        if nbytes < self.min_bytes or dt.kind not in "biufc":
            return _on_np.empty(shape, dt)   # small, or not plain numbers (objects need initialising)
        cdef list free = self._free
        cdef Py_ssize_t size, n = nbytes
        buf = None
        for i in range(len(free) - 1, -1, -1):
            size = cnp.PyArray_NBYTES(<cnp.ndarray>free[i])
            if n <= size <= 2 * n:
                buf = free.pop(i)
                break
        if buf is None:
            raw = _PoolBuffer((n + self.ALIGN,), _on_np.uint8)
            off = -(<Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>raw)) % self.ALIGN
            buf = raw[off:off + n]
        arr = cnp.PyArray_SimpleNewFromData(<int>nd, dims, dt.type_num, cnp.PyArray_DATA(<cnp.ndarray>buf))
        cnp.set_array_base(<cnp.ndarray>arr, buf)
        return <cnp.ndarray>arr

    cdef inline cnp.ndarray take_f32(self, tuple shape):
        return self._take(shape, _POOL_F32)

    def empty(self, shape, dtype=_on_np.float32):
        """An uninitialised C-contiguous array (from the pool when a fitting buffer is free)."""
        return self._take(shape if type(shape) is tuple else tuple(shape), _on_np.dtype(dtype))

    cdef void _give(self, object arr, Py_ssize_t held):
        """Take back arr's buffer if it came from this pool and nothing but the caller (holding `held`
        references to arr) still uses it. For C callers, whose references are exact; Python code calls
        give() (ops_native.ops.BufferPool), which counts with sys.getrefcount."""
        if type(arr) is not _on_np.ndarray or Py_REFCNT(arr) > held:
            return
        node = arr.base
        # each link of the view chain arr -> ... -> pooled buffer: its child's .base + `node`
        while node is not None:
            if Py_REFCNT(node) > 2:
                return
            if type(node) is _PoolBuffer:
                self._recycle(node)
                return
            node = getattr(node, "base", None)

    def _recycle(self, buf):
        """Put a pooled raw buffer (a _PoolBuffer no one else uses) on the free list."""
        if type(buf) is not _PoolBuffer:
            raise TypeError(f"not a pooled buffer: {type(buf).__name__}")
        self._free.append(buf)
        if len(self._free) > self.max_free:
            del self._free[0]

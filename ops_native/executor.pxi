# The per-node run loop of ops_native.InferenceSession. Included into ops_native/_core.pyx.
#
# The graph is compiled in Python (ops_native/compiler.py) into a list of ops_native.steps.Step, each bound
# at load time: (fn, ins, outs, recycle, clear), a NamedTuple read here by index (see steps.py).
# fn(list_of_inputs) -> tuple/list of outputs. Values live in a flat list indexed by slot; a slot is
# cleared after its last use (ops_native/memory.py), which returns the buffer to the pool for the next node.


class StepError(Exception):
    """A step raised: carries the step index and the original exception."""

    def __init__(self, int index, BaseException error):
        super().__init__(index, error)
        self.index = index
        self.error = error


cdef class NativeStep:
    """A step that run_steps calls through a C method, without a Python call; still callable as fn(args)."""

    cdef list run(self, list args):
        raise NotImplementedError

    def __call__(self, list args):
        return self.run(args)


cdef class DenseStep(NativeStep):
    """A MatMul / Gemm step with constant packed weights, run by run_steps without a Python call.

    y[..., N] = act(alpha * a[..., K] @ B + bias) for a float32 a of any rank >= 1 (1-D a gives y [N];
    only_2d: Gemm, whose A is a matrix).
    Anything else (another dtype, a wrong inner dimension, an empty a) goes to `fallback(args)`, the
    Python step it replaces, which gives the same result or the same error as before. Saves the
    per-node wrapper cost (keyword parsing, checks, reshapes): ~2 us a node, which is most of a small
    MLP's latency.
    """

    cdef PackedB pb
    cdef object bias_arr
    cdef on_gemm_epilogue ep
    cdef size_t K, N
    cdef int threads
    cdef double min_flops
    cdef BufferPool pool
    cdef object fallback
    cdef bint only_2d

    def __init__(self, PackedB pb, bias, str act, double act_alpha, double act_beta, double alpha, int threads,
                 double min_flops, BufferPool pool not None, fallback, bint only_2d=False):
        self.pb = pb
        self.K = pb.pb.K
        self.N = pb.pb.N
        self.ep.alpha = alpha
        self.ep.act = _on_act("DenseStep", act, act_alpha, act_beta)
        self.ep.bias_kind = ON_BIAS_NONE
        self.ep.bias = NULL
        if bias is not None:
            self.bias_arr = _on_np.ascontiguousarray(bias, dtype=_on_np.float32).reshape(-1)
            if self.bias_arr.size != self.N:
                raise ArgumentError(f"DenseStep: bias has {self.bias_arr.size} values, expected {self.N}")
            self.ep.bias_kind = ON_BIAS_COL
            self.ep.bias = _on_fptr(self.bias_arr)
        self.threads = threads
        self.min_flops = min_flops
        self.pool = pool
        self.fallback = fallback
        self.only_2d = only_2d

    cdef list run(self, list args):
        a = args[0]
        if type(a) is not _on_np.ndarray:
            return self.fallback(args)
        cdef cnp.ndarray arr = <cnp.ndarray>a
        cdef int nd = cnp.PyArray_NDIM(arr)
        if nd < 1 or (self.only_2d and nd != 2) or cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32 or <size_t>cnp.PyArray_DIMS(arr)[nd - 1] != self.K \
                or self.K == 0:
            return self.fallback(args)
        if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
            arr = _on_np.ascontiguousarray(arr)
        cdef size_t M = <size_t>cnp.PyArray_SIZE(arr) // self.K
        if M == 0:
            return self.fallback(args)
        shape = (self.N,) if nd == 1 else tuple(a.shape[:nd - 1]) + (self.N,)
        cdef cnp.ndarray y = self.pool.take_f32(shape)
        # few rows: bound by streaming the weights, worth splitting from ~64K of them (see run_gemm)
        cdef int nt = self.threads if (2.0 * M * self.K * self.N >= self.min_flops or
                                       (M <= 4 and <double>self.K * self.N >= 65536.0)) else 1
        cdef const float *ap = _on_fptr(arr)
        cdef float *yp = _on_fptr(y)
        cdef on_status st
        with nogil:
            st = on_gemm_packed(0, M, self.N, self.K, ap, self.K, self.pb.pb, &self.ep, yp, self.N, nt)
        _on_check(st, "MatMul/Gemm")
        return [y]


cdef class ConvStep(NativeStep):
    """A Conv step with constant weights, run by run_steps without a Python call.

    `shapes` maps an input shape to (Conv2d plan, output shape, threads); the Python step `fallback`
    fills it on the first run with a shape (and handles everything else: other dtypes, a non-ndarray
    input), so a run with a seen shape is a dict lookup and the C call. A 3-D input [N, C, L] (a 1-D
    convolution, its plan made for [N, C, 1, L]) runs as H = 1.
    """

    cdef dict shapes
    cdef BufferPool pool
    cdef object fallback
    cdef bint has_sum   # args[3] is a residual added in the conv's store (passes.layout.fuse_conv_residual)

    def __init__(self, dict shapes, BufferPool pool not None, fallback, bint has_sum=False):
        self.shapes = shapes
        self.pool = pool
        self.fallback = fallback
        self.has_sum = has_sum

    cdef list run(self, list args):
        x = args[0]
        if type(x) is not _on_np.ndarray:
            return self.fallback(args)
        cdef cnp.ndarray xa = <cnp.ndarray>x
        if cnp.PyArray_TYPE(xa) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(xa):
            return self.fallback(args)
        hit = self.shapes.get(x.shape)
        if hit is None:
            return self.fallback(args)
        cdef Conv2d conv = <Conv2d>(<tuple>hit)[0]
        cdef int nd = cnp.PyArray_NDIM(xa)
        # a 3-D [N, C, L] input is a 1-D convolution: the same memory as [N, C, 1, L]
        cdef bint one_d = nd == 3 and conv.xl == ON_LAYOUT_NCHW
        if nd != (4 if conv.xl == ON_LAYOUT_NCHW else 5) and not one_d:
            return self.fallback(args)
        cdef const float *sp = NULL
        cdef cnp.ndarray ra
        if self.has_sum:
            r = args[3]
            if type(r) is not _on_np.ndarray:
                return self.fallback(args)
            ra = <cnp.ndarray>r
            if cnp.PyArray_TYPE(ra) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(ra) or \
                    r.shape != (<tuple>hit)[1]:
                return self.fallback(args)   # e.g. a broadcasting residual: the plain Add semantics
            sp = _on_fptr(ra)
        cdef cnp.ndarray y = self.pool.take_f32((<tuple>hit)[1])
        cdef int nt = (<tuple>hit)[2]
        cdef cnp.npy_intp *d = cnp.PyArray_DIMS(xa)
        cdef size_t N = <size_t>d[0], H = 1 if one_d else <size_t>d[2], W = <size_t>d[2] if one_d else <size_t>d[3]
        cdef const float *xp = _on_fptr(xa)
        cdef float *yp = _on_fptr(y)
        cdef on_status st
        with nogil:
            st = on_conv2d_run_fused(conv.conv, N, H, W, xp, conv.xl, yp, conv.yl, sp, nt)
        _on_check(st, "Conv")
        return [y]


def run_steps(list steps, list values, BufferPool pool=None):
    """Run every ops_native.steps.Step over `values` in order (in place). Raises StepError naming the
    failing step.

    After a step, its `recycle` slots hand their value back to `pool` (buffer recycling, a C call) and are
    cleared; its `clear` slots (the caller's arrays) are only cleared.
    """
    _run_steps(steps, values, pool)
    return values


cdef int _run_steps(list steps, list values, BufferPool pool) except -1:
    cdef Py_ssize_t i, k, s, n = len(steps)
    cdef tuple step, ins, outs, recycle, clear
    cdef list args
    for i in range(n):
        step = <tuple>steps[i]
        ins = <tuple>step[1]
        args = [values[<Py_ssize_t>ins[k]] for k in range(len(ins))]
        try:
            f = step[0]
            if isinstance(f, NativeStep):
                res = (<NativeStep>f).run(args)
            else:
                res = f(args)
        except Exception as e:
            raise StepError(i, e)
        outs = <tuple>step[2]
        for k in range(len(outs)):
            if <Py_ssize_t>outs[k] != 0:
                values[<Py_ssize_t>outs[k]] = res[k]
        args = None  # drop our references first: the pool only recycles buffers nothing else holds
        res = None
        recycle = <tuple>step[3]
        for k in range(len(recycle)):
            s = <Py_ssize_t>recycle[k]
            v = values[s]
            values[s] = None
            if pool is not None and type(v) is _on_np.ndarray and \
                    cnp.PyArray_NBYTES(<cnp.ndarray>v) >= pool.min_bytes:
                pool._give(v, 1)   # `v` is the one reference allowed
            v = None
        clear = <tuple>step[4]
        for k in range(len(clear)):
            values[<Py_ssize_t>clear[k]] = None
    return 0


cdef class PlanRun:
    """The run of a compiled sub-plan (an If branch, a Loop / Scan body): its steps over a fresh copy of
    its slot template, inputs placed, outputs read back, all in C calls. `on_error(StepError)` returns
    the exception to raise (naming the branch and the inner node)."""

    cdef list steps, template
    cdef tuple input_slots, outer_index, output_slots
    cdef BufferPool pool
    cdef object on_error

    def __init__(self, list steps, list template, tuple input_slots, tuple outer_index, tuple output_slots,
                 BufferPool pool, on_error):
        self.steps = steps
        self.template = template
        self.input_slots = input_slots     # formal inputs first, then the outer reads
        self.outer_index = outer_index     # for each outer read: its index among the node's outer values
        self.output_slots = output_slots
        self.pool = pool
        self.on_error = on_error

    cdef list call(self, list formal, list outer, Py_ssize_t outer_at):
        """Outputs of the plan for these formal inputs; outer values are outer[outer_at + k]."""
        cdef list values = list(self.template)
        cdef Py_ssize_t k, nf = len(formal), n_outer = len(self.outer_index)
        for k in range(nf):
            values[<Py_ssize_t>self.input_slots[k]] = formal[k]
        for k in range(n_outer):
            values[<Py_ssize_t>self.input_slots[nf + k]] = outer[outer_at + <Py_ssize_t>self.outer_index[k]]
        try:
            _run_steps(self.steps, values, self.pool)
        except StepError as e:
            raise self.on_error(e) from e.error
        return [values[<Py_ssize_t>s] for s in self.output_slots]

    def run(self, list formal, list outer):
        return self.call(formal, outer, 0)


cdef class IfStep(NativeStep):
    """An If node: picks a branch by its one-value condition and runs its PlanRun, without a Python frame.
    Outer values read by the branches follow the node's own `n_own` inputs."""

    cdef PlanRun then_run, else_run
    cdef Py_ssize_t n_own

    def __init__(self, PlanRun then_run not None, PlanRun else_run not None, Py_ssize_t n_own):
        self.then_run = then_run
        self.else_run = else_run
        self.n_own = n_own

    cdef list run(self, list args):
        cond = args[0]
        if type(cond) is not _on_np.ndarray or cnp.PyArray_SIZE(<cnp.ndarray>cond) != 1:
            raise ValueError(f"If condition of shape {_on_np.shape(cond)}: expected one value")
        cdef PlanRun branch = self.then_run if cond else self.else_run
        return branch.call([], args, self.n_own)


cdef class UnaryStep(NativeStep):
    """An elementwise activation (Relu, Sigmoid, Tanh, Clip with constant bounds, the fused affine...) run by
    run_steps without a Python call: a float32 C-contiguous input goes straight to the C kernel into a pooled
    buffer; anything else (another dtype, a strided view) goes to `fallback(args)`, the Python step it
    replaces. A small model is mostly such nodes, where the Python frame, the keyword handling and the
    generic checks were most of the ~1.5 us a node cost (ORT: ~0.4)."""

    cdef int code, threads
    cdef float alpha, beta
    cdef BufferPool pool
    cdef object fallback

    def __init__(self, int code, double alpha, double beta, int threads, BufferPool pool not None, fallback):
        self.code = code
        self.alpha = alpha
        self.beta = beta
        self.threads = threads
        self.pool = pool
        self.fallback = fallback

    cdef list run(self, list args):
        x = args[0]
        if type(x) is not _on_np.ndarray:
            return self.fallback(args)
        cdef cnp.ndarray xa = <cnp.ndarray>x
        if cnp.PyArray_TYPE(xa) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(xa):
            return self.fallback(args)
        cdef cnp.ndarray y = self.pool.take_f32(x.shape)
        cdef const float *xp = _on_fptr(xa)
        cdef float *yp = _on_fptr(y)
        cdef size_t n = <size_t>cnp.PyArray_SIZE(xa)
        cdef int st
        with nogil:
            st = on_unary_f32(self.code, xp, yp, n, self.alpha, self.beta, self.threads)
        _ops_check(st, "unary op")
        return [y]

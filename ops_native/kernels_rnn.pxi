# Bindings of the recurrent layers (on_rnn.h): LSTM / GRU / RNN over a whole sequence in one C call.
# Included into ops_native/_core.pyx after kernels_gemm.pxi (PackedB, _on_check, _on_f32).
#
# RnnLayer holds the packed weights of one ONNX node (packed once, at load); run() takes one input
# sequence and the caller's output arrays. The ONNX-level work (attribute defaults, splitting W/R/B by
# direction and gate) happens in ops_native/ops/recurrent.py.

from libc.stdint cimport int32_t

cdef extern from "on_rnn.h" nogil:
    ctypedef enum on_rnn_act_kind:
        ON_RNN_ACT_COUNT
    ctypedef struct on_rnn_act:
        on_rnn_act_kind kind
        float alpha
        float beta
    ctypedef enum on_rnn_kind:
        ON_RNN_LSTM
        ON_RNN_GRU
        ON_RNN_SIMPLE
    ctypedef struct on_rnn_cell:
        size_t hidden
        on_rnn_act f
        on_rnn_act g
        on_rnn_act h
        float clip
        const float *peephole
        int input_forget
        int linear_before_reset
    ctypedef struct on_rnn_strides:
        size_t t
        size_t d
        size_t b
    ctypedef struct on_rnn_desc:
        on_rnn_kind kind
        size_t seq, batch, input, hidden, ndir
        int reverse
        on_rnn_cell cell[2]
        const on_packed_b *w
        const float *w_bias
        const on_packed_b *r[2]
        const on_packed_b *r_h[2]
        const float *r_bias[2]
        size_t x_ts, x_bs
        on_rnn_strides y
        on_rnn_strides st
    on_status on_rnn_f32(const on_rnn_desc *d, const float *x, const int32_t *seq_lens, const float *h0,
                         const float *c0, float *y, float *y_h, float *y_c, int nthreads)


# ONNX activation name -> on_rnn_act_kind (on_rnn.h order)
RNN_ACTIVATIONS = {"Sigmoid": 0, "Tanh": 1, "Relu": 2, "HardSigmoid": 3, "LeakyRelu": 4, "ThresholdedRelu": 5,
                   "ScaledTanh": 6, "Elu": 7, "Softsign": 8, "Softplus": 9, "Affine": 10}
_RNN_KINDS = {"LSTM": ON_RNN_LSTM, "GRU": ON_RNN_GRU, "RNN": ON_RNN_SIMPLE}
_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


cdef const float *_rnn_ptr(object a):
    return NULL if a is None else <const float *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class RnnLayer:
    """The packed weights of one recurrent layer, and run() over a sequence.

    kind: "LSTM" | "GRU" | "RNN". w: float32 [D * G * H, input] (W of all directions stacked, ONNX gate order).
    r: per direction float32 [G * H, H] (a GRU with linear_before_reset = 0: [2H, H], its h rows in r_h).
    w_bias: [D * G * H] or None (added to the input projection); r_bias: per direction [G * H] or None
    (added to the product with r). peephole: per direction [3H] or None. acts: per direction three
    (kind, alpha, beta) triples (f, g, h; unused ones ignored). layout: 0 ([T, B, .]) or 1 (batch first).
    """

    cdef on_rnn_desc d
    cdef str kind_name
    cdef PackedB w
    cdef list r, r_h
    cdef list keep   # arrays the descriptor points into
    cdef int layout

    def __init__(self, str kind, w, list r, list r_h, w_bias, list r_bias, list peephole, list acts,
                 double clip=0.0, bint input_forget=False, bint linear_before_reset=False, bint reverse=False,
                 int layout=0):
        if kind not in _RNN_KINDS:
            raise ArgumentError(f"RnnLayer: kind must be one of {sorted(_RNN_KINDS)}, got {kind!r}")
        w = _on_f32(w, "RnnLayer: w", 2)
        cdef size_t ndir = len(r), G = _RNN_GATES[kind], dirn, H
        if ndir not in (1, 2) or len(acts) != ndir:
            raise ArgumentError(f"RnnLayer: expected 1 or 2 directions, got {ndir} R matrices and {len(acts)} activation sets")
        H = r[0].shape[1]
        if w.shape[0] != ndir * G * H:
            raise ArgumentError(f"RnnLayer: w has {w.shape[0]} rows, expected {ndir * G * H}")
        self.kind_name = kind
        self.layout = layout
        self.keep = []
        self.d.kind = _RNN_KINDS[kind]
        self.d.input = w.shape[1]
        self.d.hidden = H
        self.d.ndir = ndir
        self.d.reverse = 1 if reverse else 0
        self.w = PackedB(w, True)
        self.d.w = self.w.pb
        self.d.w_bias = NULL
        if w_bias is not None:
            w_bias = _on_f32(w_bias, "RnnLayer: w_bias", 1)
            if w_bias.shape[0] != ndir * G * H:
                raise ArgumentError(f"RnnLayer: w_bias has {w_bias.shape[0]} values, expected {ndir * G * H}")
            self.keep.append(w_bias)
            self.d.w_bias = _rnn_ptr(w_bias)
        self.r = [PackedB(_on_f32(m, "RnnLayer: r", 2), True) for m in r]
        self.r_h = [None if m is None else PackedB(_on_f32(m, "RnnLayer: r_h", 2), True) for m in r_h] \
            if r_h else [None] * ndir
        cdef on_rnn_cell *c
        for dirn in range(2):
            self.d.r[dirn] = NULL
            self.d.r_h[dirn] = NULL
            self.d.r_bias[dirn] = NULL
        for dirn in range(ndir):
            self.d.r[dirn] = (<PackedB>self.r[dirn]).pb
            if self.r_h[dirn] is not None:
                self.d.r_h[dirn] = (<PackedB>self.r_h[dirn]).pb
            if r_bias and r_bias[dirn] is not None:
                rb = _on_f32(r_bias[dirn], "RnnLayer: r_bias", 1)
                if rb.shape[0] != self.r[dirn].N:
                    raise ArgumentError(f"RnnLayer: r_bias has {rb.shape[0]} values, expected {self.r[dirn].N}")
                self.keep.append(rb)
                self.d.r_bias[dirn] = _rnn_ptr(rb)
            c = &self.d.cell[dirn]
            c.hidden = H
            c.clip = clip
            c.input_forget = 1 if input_forget else 0
            c.linear_before_reset = 1 if linear_before_reset else 0
            c.peephole = NULL
            if peephole and peephole[dirn] is not None:
                p = _on_f32(peephole[dirn], "RnnLayer: peephole", 1)
                if p.shape[0] != 3 * H:
                    raise ArgumentError(f"RnnLayer: peephole has {p.shape[0]} values, expected {3 * H}")
                self.keep.append(p)
                c.peephole = _rnn_ptr(p)
            trip = list(acts[dirn])
            if len(trip) != 3:
                raise ArgumentError(f"RnnLayer: expected 3 activations per direction, got {len(trip)}")
            for slot, (k, alpha, beta) in enumerate(trip):
                if not 0 <= k < <int>ON_RNN_ACT_COUNT:
                    raise ArgumentError(f"RnnLayer: unknown activation kind {k}")
                if slot == 0:
                    c.f.kind, c.f.alpha, c.f.beta = <on_rnn_act_kind>k, alpha, beta
                elif slot == 1:
                    c.g.kind, c.g.alpha, c.g.beta = <on_rnn_act_kind>k, alpha, beta
                else:
                    c.h.kind, c.h.alpha, c.h.beta = <on_rnn_act_kind>k, alpha, beta

    @property
    def hidden(self) -> int:
        return self.d.hidden

    @property
    def num_directions(self) -> int:
        return self.d.ndir

    def run(self, x, seq_lens=None, h0=None, c0=None, y=None, y_h=None, y_c=None, int threads=1):
        """Run over x ([T, B, input], or [B, T, input] with layout 1) into the given outputs (None: not
        wanted): y [T, D, B, H] ([B, T, D, H]), y_h / y_c [D, B, H] ([B, D, H]). seq_lens: int32 [B] or None;
        h0 / c0: like y_h or None (zeros)."""
        x = _on_f32(x, f"{self.kind_name}: X", 3)
        cdef size_t T, B, D = self.d.ndir, H = self.d.hidden
        cdef on_rnn_desc d = self.d
        if self.layout:
            B, T = x.shape[0], x.shape[1]
            d.x_ts, d.x_bs = 1, T
            d.y.t, d.y.d, d.y.b = D * H, H, T * D * H
            d.st.t, d.st.d, d.st.b = 0, H, D * H
            y_shape, st_shape = (B, T, D, H), (B, D, H)
        else:
            T, B = x.shape[0], x.shape[1]
            d.x_ts, d.x_bs = B, 1
            d.y.t, d.y.d, d.y.b = D * B * H, B * H, H
            d.st.t, d.st.d, d.st.b = 0, B * H, H
            y_shape, st_shape = (T, D, B, H), (D, B, H)
        if x.shape[2] != self.d.input:
            raise ArgumentError(f"{self.kind_name}: X has {x.shape[2]} features, W expects {self.d.input}")
        d.seq, d.batch = T, B
        if seq_lens is not None:
            seq_lens = _on_np.ascontiguousarray(seq_lens, dtype=_on_np.int32).reshape(-1)
            if seq_lens.shape[0] != B:
                raise ArgumentError(f"{self.kind_name}: sequence_lens has {seq_lens.shape[0]} values, batch is {B}")
        for name, a in (("initial_h", h0), ("initial_c", c0)):
            if a is not None and (a.dtype != _on_np.float32 or tuple(a.shape) != st_shape or not a.flags.c_contiguous):
                raise ArgumentError(f"{self.kind_name}: {name} must be C-contiguous float32 {list(st_shape)}, got "
                                    f"{a.dtype} {list(a.shape)}")
        for name, a, shp in (("Y", y, y_shape), ("Y_h", y_h, st_shape), ("Y_c", y_c, st_shape)):
            if a is not None:
                _on_out(a, shp, f"{self.kind_name}: {name}", (x,))
        if T == 0 or B == 0:
            raise ArgumentError(f"{self.kind_name}: empty X {list(x.shape)}")
        cdef const float *xp = _rnn_ptr(x)
        cdef const int32_t *lp = NULL if seq_lens is None else <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>seq_lens)
        cdef const float *h0p = _rnn_ptr(h0)
        cdef const float *c0p = _rnn_ptr(c0)
        cdef float *yp = <float *>_rnn_ptr(y)
        cdef float *yhp = <float *>_rnn_ptr(y_h)
        cdef float *ycp = <float *>_rnn_ptr(y_c)
        cdef on_status st
        with nogil:
            st = on_rnn_f32(&d, xp, lp, h0p, c0p, yp, yhp, ycp, threads)
        _on_check(st, self.kind_name)

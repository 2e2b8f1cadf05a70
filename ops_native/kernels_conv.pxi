# Bindings of the convolution core (on_conv.h): Conv2d, ConvTranspose2d and the layout check the compiler
# asks. Included into ops_native/_core.pyx after kernels_gemm.pxi, whose argument helpers (_on_f32,
# _on_out, _on_check, _on_act) it uses; the same rules hold: arguments checked here, kernels without the GIL.

cdef extern from "on_conv.h" nogil:
    ctypedef struct on_conv_params:
        size_t C, OC, KH, KW, stride_h, stride_w, dil_h, dil_w, pad_t, pad_l, pad_b, pad_r, group
        size_t out_pad_h, out_pad_w
    ctypedef struct on_conv2d:
        pass
    ctypedef struct on_conv_transpose2d:
        pass
    ctypedef enum on_conv_path:
        ON_CONV_PATH_IM2COL
        ON_CONV_PATH_1X1
        ON_CONV_PATH_DEPTHWISE
        ON_CONV_PATH_NCHWC
    ctypedef enum on_layout:
        ON_LAYOUT_NCHW
        ON_LAYOUT_NCHWC8
    unsigned ON_CONV_BLOCKED
    on_status on_conv2d_create(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                               on_conv2d **out)
    on_status on_conv2d_create_ex(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                                  unsigned flags, on_conv2d **out)
    int on_conv2d_layout_ok(const on_conv2d *conv, on_layout xl, on_layout yl)
    int on_conv2d_plan_layout_ok(const on_conv_params *p, unsigned flags, on_layout xl, on_layout yl)
    on_status on_conv2d_run_layout(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x,
                                   on_layout xl, float *y, on_layout yl, int nthreads)
    int on_conv2d_sum_ok(const on_conv2d *conv)
    on_status on_conv2d_run_fused(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x,
                                  on_layout xl, float *y, on_layout yl, const float *sum, int nthreads)
    void on_conv2d_free(on_conv2d *conv)
    on_conv_path on_conv2d_path(const on_conv2d *conv)
    on_status on_conv2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH, size_t *OW)
    on_status on_conv2d_run(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x, float *y,
                            int nthreads)
    on_status on_conv_transpose2d_create(const on_conv_params *p, const float *weight, const float *bias,
                                         on_conv_transpose2d **out)
    void on_conv_transpose2d_free(on_conv_transpose2d *conv)
    on_status on_conv_transpose2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH,
                                              size_t *OW)
    on_status on_conv_transpose2d_run(const on_conv_transpose2d *conv, size_t N, size_t H, size_t W,
                                      const float *x, float *y, int nthreads)


def _on_ints(v, int n, str name, str where, int minimum):
    """A tuple of n ints >= minimum (a single int is repeated)."""
    if isinstance(v, (int, _on_np.integer)):
        v = (int(v),) * n
    try:
        t = tuple(int(i) for i in v)
    except TypeError:
        raise ArgumentError(f"{where}: {name} must be a sequence of {n} ints, got {v!r}")
    if len(t) != n or any(i < minimum for i in t):
        raise ArgumentError(f"{where}: {name} must be {n} ints >= {minimum}, got {list(t)}")
    return t


cdef class _ConvBase:
    cdef on_conv_params p
    cdef int one_d
    cdef readonly tuple weight_shape

    cdef _set_geometry(self, str where, tuple wshape, strides, pads, dilations, group):
        """Fill the spatial parameters; 3-D weights (1-D conv) become KH = 1."""
        nd = len(wshape) - 2
        if nd not in (1, 2):
            raise ArgumentError(f"{where}: weight must be 3-D or 4-D, got shape {list(wshape)}")
        self.one_d = nd == 1
        st = _on_ints(strides, nd, "strides", where, 1)
        dl = _on_ints(dilations, nd, "dilations", where, 1)
        pd = _on_ints(pads, 2 * nd, "pads", where, 0)
        g = int(group)
        if g < 1:
            raise ArgumentError(f"{where}: group must be >= 1, got {g}")
        if nd == 1:
            st = (1,) + st
            dl = (1,) + dl
            pd = (0, pd[0], 0, pd[1])
        self.p.KH = 1 if nd == 1 else wshape[2]
        self.p.KW = wshape[len(wshape) - 1]
        self.p.stride_h, self.p.stride_w = st
        self.p.dil_h, self.p.dil_w = dl
        self.p.pad_t, self.p.pad_l, self.p.pad_b, self.p.pad_r = pd
        self.p.group = g
        self.p.out_pad_h = 0
        self.p.out_pad_w = 0
        self.weight_shape = wshape

    cdef tuple _xdims(self, str where, tuple xs):
        nd = 3 if self.one_d else 4
        if len(xs) != nd:
            raise ArgumentError(f"{where}: x must be {nd}-D [N, C, {'W' if self.one_d else 'H, W'}], "
                                f"got shape {list(xs)}")
        if xs[1] != self.p.C:
            raise ArgumentError(f"{where}: x has {xs[1]} channels, the weight expects {self.p.C} "
                                f"(x shape {list(xs)}, weight shape {list(self.weight_shape)})")
        if self.one_d:
            return xs[0], 1, xs[2]
        return xs[0], xs[2], xs[3]

    cdef tuple _out_shape(self, size_t n, size_t oh, size_t ow):
        if self.one_d:
            return (n, self.p.OC, ow)
        return (n, self.p.OC, oh, ow)


LAYOUTS = ("nchw", "nchwc8")


cdef on_layout _on_layout(str where, str name) except *:
    if name == "nchw":
        return ON_LAYOUT_NCHW
    if name == "nchwc8":
        return ON_LAYOUT_NCHWC8
    raise ArgumentError(f"{where}: layout must be one of {LAYOUTS}, got {name!r}")


def conv_layout_ok(weight_shape, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                   in_layout="nchw", out_layout="nchw") -> bool:
    """Whether a 2-D Conv2d plan with this geometry can read in_layout and write out_layout."""
    ws = tuple(int(d) for d in weight_shape)
    if len(ws) != 4:
        return in_layout == out_layout == "nchw"
    cdef on_conv_params p
    p.OC, p.C = ws[0], ws[1] * int(group)
    p.KH, p.KW = ws[2], ws[3]
    p.stride_h, p.stride_w = (int(v) for v in strides)
    p.dil_h, p.dil_w = (int(v) for v in dilations)
    p.pad_t, p.pad_l, p.pad_b, p.pad_r = (int(v) for v in pads)
    p.group = int(group)
    p.out_pad_h = p.out_pad_w = 0
    cdef on_layout xl = _on_layout("conv_layout_ok", in_layout), yl = _on_layout("conv_layout_ok", out_layout)
    return on_conv2d_plan_layout_ok(&p, ON_CONV_BLOCKED, xl, yl) != 0


cdef class Conv2d(_ConvBase):
    """A convolution plan (float32): weights copied and laid out once, bias + activation fused.

    weight [OC, C/group, KH, KW] (or [OC, C/group, KW] for 1-D); pads = (top, left, bottom, right)
    (1-D: (left, right)). auto_pad must be resolved into explicit pads by the caller.
    in_layout / out_layout: "nchw" ([N, C, H, W]) or "nchwc8" ([N, ceil(C/8), H, W, 8], channel c in
    block c // 8, lane c % 8; 2-D only, where conv_layout_ok allows it).
    """

    cdef on_conv2d *conv
    cdef readonly str in_layout, out_layout
    cdef on_layout xl, yl

    def __cinit__(self):
        self.conv = NULL

    def __init__(self, weight, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                 act="none", act_alpha=0.0, act_beta=0.0, in_layout="nchw", out_layout="nchw"):
        self.xl = _on_layout("Conv2d", in_layout)
        self.yl = _on_layout("Conv2d", out_layout)
        self.in_layout, self.out_layout = in_layout, out_layout
        weight = _on_f32(weight, "Conv2d: weight")
        wshape = tuple(weight.shape)
        nd = weight.ndim - 2
        if nd == 1 and strides == (1, 1) and dilations == (1, 1) and pads == (0, 0, 0, 0):
            strides, dilations, pads = (1,), (1,), (0, 0)
        self._set_geometry("Conv2d", wshape, strides, pads, dilations, group)
        self.p.OC = wshape[0]
        self.p.C = wshape[1] * self.p.group
        if self.p.OC % self.p.group:
            raise ArgumentError(f"Conv2d: output channels {self.p.OC} not divisible by group {self.p.group}")
        cdef on_act_t a = _on_act("Conv2d", act, act_alpha, act_beta)
        cdef cnp.ndarray w = weight
        cdef cnp.ndarray b = None
        cdef const float *bp = NULL
        if bias is not None:
            bias = _on_f32(bias, "Conv2d: bias")
            if bias.size != self.p.OC or bias.ndim != 1:
                raise ArgumentError(f"Conv2d: bias must have shape [{self.p.OC}], got {list(bias.shape)}")
            b = bias
            bp = _on_fptr(b)
        cdef const float *wp = _on_fptr(w)
        cdef on_status st
        cdef unsigned flags = ON_CONV_BLOCKED if (self.xl != ON_LAYOUT_NCHW or self.yl != ON_LAYOUT_NCHW) else 0
        if flags and (self.one_d or not on_conv2d_plan_layout_ok(&self.p, flags, self.xl, self.yl)):
            raise ArgumentError(f"Conv2d(weight {list(wshape)}, group {self.p.group}): this convolution cannot "
                                f"read {in_layout} and write {out_layout}")
        with nogil:
            st = on_conv2d_create_ex(&self.p, wp, bp, a, flags, &self.conv)
        _on_check(st, f"Conv2d(weight {list(wshape)}, group {self.p.group})")

    def __dealloc__(self):
        if self.conv != NULL:
            on_conv2d_free(self.conv)
            self.conv = NULL

    @property
    def path(self) -> str:
        """Which kernel runs: "depthwise", "1x1", "nchwc" (direct, channel-blocked) or "im2col"."""
        cdef on_conv_path pth = on_conv2d_path(self.conv)
        return {ON_CONV_PATH_DEPTHWISE: "depthwise", ON_CONV_PATH_1X1: "1x1",
                ON_CONV_PATH_NCHWC: "nchwc"}.get(pth, "im2col")

    cdef tuple _bdims(self, str where, tuple xs):
        """(N, H, W) of an input of shape xs in this plan's input layout."""
        if self.xl == ON_LAYOUT_NCHW:
            return self._xdims(where, xs)
        cb = (self.p.C + 7) // 8
        if len(xs) != 5 or xs[1] != cb or xs[4] != 8:
            raise ArgumentError(f"{where}: x must be NCHWc8 [N, {cb}, H, W, 8] for {self.p.C} channels, "
                                f"got shape {list(xs)}")
        return xs[0], xs[2], xs[3]

    def output_shape(self, x_shape) -> tuple:
        """Output shape for an input of shape x_shape (both in the plan's layouts)."""
        n, h, w = self._bdims("Conv2d", tuple(int(d) for d in x_shape))
        cdef size_t oh = 0, ow = 0
        st = on_conv2d_output_size(&self.p, h, w, &oh, &ow)
        if st == ON_ERR_SHAPE:
            pads = [self.p.pad_t, self.p.pad_l, self.p.pad_b, self.p.pad_r]
            raise ArgumentError(f"Conv2d: input {list(x_shape)} is smaller than the (dilated) kernel "
                                f"{[self.p.KH, self.p.KW]} with pads {pads}")
        _on_check(st, "Conv2d")
        if self.yl == ON_LAYOUT_NCHWC8:
            return (n, (self.p.OC + 7) // 8, oh, ow, 8)
        return self._out_shape(n, oh, ow)

    @property
    def can_sum(self) -> bool:
        """Whether run() takes a residual `sum` (direct NCHWc path, no activation)."""
        return on_conv2d_sum_ok(self.conv) != 0

    def run(self, x, out=None, threads=1, sum=None):
        """y = act(conv(x, weight) + bias) (+ sum) for x [N, C, H, W] (or NCHWc8, per the plan's layouts);
        sum: a residual of the output's shape and layout, added in the same pass (plans with can_sum)."""
        x = _on_f32(x, "Conv2d.run: x")
        oshape = self.output_shape(x.shape)
        n, h, w = self._bdims("Conv2d", tuple(x.shape))
        cdef const float *sp = NULL
        cdef cnp.ndarray sa
        if sum is not None:
            if not self.can_sum:
                raise ArgumentError("Conv2d.run: this plan cannot add a residual (activation, or not on the "
                                    "direct NCHWc path)")
            sum = _on_f32(sum, "Conv2d.run: sum")
            if tuple(sum.shape) != tuple(oshape):
                raise ArgumentError(f"Conv2d.run: sum has shape {list(sum.shape)}, the output {list(oshape)}")
            sa = sum
            sp = _on_fptr(sa)
        cdef cnp.ndarray xa = x
        cdef cnp.ndarray ya = _on_out(out, oshape, "Conv2d.run", (x,))
        cdef int nt = _on_threads(threads, "Conv2d.run")
        cdef size_t N = n, H = h, W = w
        cdef const float *xp = _on_fptr(xa)
        cdef float *yp = _on_fptr(ya)
        cdef on_status st
        with nogil:
            st = on_conv2d_run_fused(self.conv, N, H, W, xp, self.xl, yp, self.yl, sp, nt)
        _on_check(st, "Conv2d.run")
        return ya


cdef class ConvTranspose2d(_ConvBase):
    """A transposed-convolution plan (NCHW float32): GEMM into columns, then col2im.

    weight [C, OC/group, KH, KW] (ONNX layout; 3-D for 1-D); pads = (top, left, bottom, right);
    output_padding = (h, w). Explicit pads only (the caller resolves auto_pad / output_shape).
    """

    cdef on_conv_transpose2d *conv

    def __cinit__(self):
        self.conv = NULL

    def __init__(self, weight, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), output_padding=(0, 0),
                 dilations=(1, 1), group=1):
        weight = _on_f32(weight, "ConvTranspose2d: weight")
        wshape = tuple(weight.shape)
        nd = weight.ndim - 2
        if nd == 1 and strides == (1, 1) and dilations == (1, 1) and pads == (0, 0, 0, 0):
            strides, dilations, pads = (1,), (1,), (0, 0)
        if nd == 1 and output_padding == (0, 0):
            output_padding = (0,)
        self._set_geometry("ConvTranspose2d", wshape, strides, pads, dilations, group)
        op = _on_ints(output_padding, nd, "output_padding", "ConvTranspose2d", 0)
        if nd == 1:
            op = (0,) + op
        self.p.out_pad_h, self.p.out_pad_w = op
        self.p.C = wshape[0]
        self.p.OC = wshape[1] * self.p.group
        if self.p.C % self.p.group:
            raise ArgumentError(f"ConvTranspose2d: input channels {self.p.C} not divisible by group "
                                f"{self.p.group}")
        cdef cnp.ndarray w = weight
        cdef cnp.ndarray b = None
        cdef const float *bp = NULL
        if bias is not None:
            bias = _on_f32(bias, "ConvTranspose2d: bias")
            if bias.size != self.p.OC or bias.ndim != 1:
                raise ArgumentError(f"ConvTranspose2d: bias must have shape [{self.p.OC}], got {list(bias.shape)}")
            b = bias
            bp = _on_fptr(b)
        cdef const float *wp = _on_fptr(w)
        cdef on_status st
        with nogil:
            st = on_conv_transpose2d_create(&self.p, wp, bp, &self.conv)
        _on_check(st, f"ConvTranspose2d(weight {list(wshape)}, group {self.p.group})")

    def __dealloc__(self):
        if self.conv != NULL:
            on_conv_transpose2d_free(self.conv)
            self.conv = NULL

    def output_shape(self, x_shape) -> tuple:
        """Output shape for an input of shape x_shape."""
        n, h, w = self._xdims("ConvTranspose2d", tuple(int(d) for d in x_shape))
        cdef size_t oh = 0, ow = 0
        st = on_conv_transpose2d_output_size(&self.p, h, w, &oh, &ow)
        if st != ON_OK:
            raise ArgumentError(f"ConvTranspose2d: no valid output for input {list(x_shape)} (pads "
                                f"{[self.p.pad_t, self.p.pad_l, self.p.pad_b, self.p.pad_r]}, output_padding "
                                f"{[self.p.out_pad_h, self.p.out_pad_w]} must be < stride or dilation)")
        return self._out_shape(n, oh, ow)

    def run(self, x, out=None, threads=1):
        """y = conv_transpose(x, weight) + bias for x [N, C, H, W]."""
        x = _on_f32(x, "ConvTranspose2d.run: x")
        oshape = self.output_shape(x.shape)
        n, h, w = self._xdims("ConvTranspose2d", tuple(x.shape))
        cdef cnp.ndarray xa = x
        cdef cnp.ndarray ya = _on_out(out, oshape, "ConvTranspose2d.run", (x,))
        cdef int nt = _on_threads(threads, "ConvTranspose2d.run")
        cdef size_t N = n, H = h, W = w
        cdef const float *xp = _on_fptr(xa)
        cdef float *yp = _on_fptr(ya)
        cdef on_status st
        with nogil:
            st = on_conv_transpose2d_run(self.conv, N, H, W, xp, yp, nt)
        _on_check(st, "ConvTranspose2d.run")
        return ya

# The per-node run loop of ops_native.InferenceSession. Included into ops_native/_core.pyx.
#
# The graph is compiled in Python (ops_native/graph.py) into a list of steps, each bound at load time:
#   (fn, input slots, output slots, slots to free after this step)
# fn(list_of_inputs) -> tuple/list of outputs. Values live in a flat list indexed by slot; a slot is
# cleared after its last use (liveness), which returns the buffer to the allocator for the next node.


class StepError(Exception):
    """A step raised: carries the step index and the original exception."""

    def __init__(self, int index, BaseException error):
        super().__init__(index, error)
        self.index = index
        self.error = error


def run_steps(list steps, list values, give=None):
    """Run every step over `values` in order (in place). Raises StepError naming the failing step.

    A free slot s > 0 hands its value to give(value) (buffer recycling) before clearing; s < 0 only clears.
    """
    cdef Py_ssize_t i, k, s, n = len(steps)
    cdef tuple step, ins, outs, frees
    cdef list args
    for i in range(n):
        step = <tuple>steps[i]
        ins = <tuple>step[1]
        args = [values[<Py_ssize_t>ins[k]] for k in range(len(ins))]
        try:
            res = step[0](args)
        except Exception as e:
            raise StepError(i, e)
        outs = <tuple>step[2]
        for k in range(len(outs)):
            if <Py_ssize_t>outs[k] != 0:
                values[<Py_ssize_t>outs[k]] = res[k]
        args = None  # drop our references first: the pool only recycles buffers nothing else holds
        res = None
        frees = <tuple>step[3]
        for k in range(len(frees)):
            s = <Py_ssize_t>frees[k]
            if s > 0:
                v = values[s]
                values[s] = None
                if give is not None and v is not None:
                    give(v)
                v = None
            else:
                values[-s] = None
    return values
